"""Runs with hostile text and large runs for the viewer's tests, in the layout ``tract-eval run`` writes."""
from __future__ import annotations

import json
from pathlib import Path

# what a model or a data set might hold; none of it may run or become an element in the site
SCRIPT = "<script>alert('script')</script>"
IMAGE = "<img src=x onerror=\"alert('img')\">"
TEXTAREA = "</textarea><b id=\"injected\">injected</b>"
CLOSE_SCRIPT = "</script><script>alert('close')</script>"
PAYLOADS = (SCRIPT, IMAGE, TEXTAREA, CLOSE_SCRIPT)


def full_row(sample_id: str, gold: float | None, prediction: float | None, status: str = "ok", text: str = "",
             meta: dict | None = None, input_chars: int = 200, cot_chars: int = 80) -> dict:
    """A row with every field a CoT-RAIL run writes."""
    probs = {"1": 0.05, "2": 0.1, "3": 0.2, "4": 0.4, "5": 0.25}
    cot = (text + " " + "The response is relevant. " * (cot_chars // 26 + 1))[:cot_chars] + " So the overall score is "
    return {"id": sample_id, "gold": gold, "prediction": prediction, "status": status,
            "per_cot": [prediction], "cots": [cot], "score_probs": [probs], "raw_probs": [probs],
            "candidate_mass": [0.93], "missing_candidates": [[]], "finish_reasons": ["delimiter"],
            "forced": [" So the overall score is"], "cut": [False], "retries": [0],
            "cot_parse_failures": int(status == "parse_failure"),
            "errors": [f"no score in: {text}"] if status == "parse_failure" else [],
            "input": (f"###The instruction to evaluate:\n{text}\n" + "Tell me about judges. " * (input_chars // 22 + 1))
            [:max(input_chars, len(text) + 40)],
            "prompt_tokens": 300, "generated_tokens": 40, "seconds": 0.5, "meta": meta or {}}


def write_run(out: Path, judge: str, bench: str, rows: list[dict], manifest: dict | None = None) -> Path:
    folder = out / judge / bench
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    (folder / "metrics.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps(manifest or {
        "identity": {"model": {"model": "embedded:test"}}, "judge": {"name": judge, "protocol": "cot-rail"},
        "bench": {"name": bench, "scale": [1, 5]}, "backend": {"model": "embedded:test"}}))
    return folder


def hostile_runs(out: Path) -> Path:
    """Two judges on Vicuna and one on RewardBench, payloads in ids, inputs, CoTs, errors and a judge's name."""
    for judge, shift in (("alpha", 0.0), (f"beta{IMAGE}", 0.5)):
        rows = [full_row(f"s{i}-{payload}", 1.0 + i, 1.5 + i - shift, text=payload)
                for i, payload in enumerate(PAYLOADS)]
        rows.append(full_row("failed", 3.0, None, status="parse_failure", text=SCRIPT))
        write_run(out, judge, "vicuna", rows)
    pairs = []
    for i, payload in enumerate(PAYLOADS):
        for side, score in (("chosen", 4.0), ("rejected", 2.0 + i)):
            pairs.append(full_row(f"alpacaeval-easy/{i}/{side}", None, score, text=payload,
                                  meta={"subset": "alpacaeval-easy", "section": "Chat", "pair_id": f"p{i}{payload}",
                                        "side": side}))
    write_run(out, "alpha", "rewardbench", pairs)
    return out


def large_run(out: Path, rows: int = 5000) -> Path:
    """One judge, ``rows`` samples of realistic size (2,000-character inputs, 600-character CoTs)."""
    write_run(out, "big", "vicuna", [
        full_row(f"{i}:sample", float(1 + i % 5), 1.0 + (i * 7 % 40) / 10, text=f"question {i}",
                 input_chars=2000, cot_chars=600) for i in range(rows)])
    return out
