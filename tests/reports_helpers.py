"""Hand-made runs in the layout ``tract-eval run`` writes, for the report tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GOLD = [1.0, 1.67, 2.0, 2.33, 3.0, 3.33, 4.0, 4.33, 4.67, 5.0]


def write_run(out: Path, judge: str, bench: str, rows: list[dict], metrics: dict | None = None) -> Path:
    folder = out / judge / bench
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics or {}))
    (folder / "manifest.json").write_text(json.dumps({"judge": {"name": judge}, "seed": 0}))
    return folder


def absolute_rows(gold: list[float], prediction: list[float | None], prefix: str = "s") -> list[dict]:
    rows = []
    for i, (g, p) in enumerate(zip(gold, prediction)):
        rows.append({"id": f"{prefix}{i}", "gold": g, "prediction": p, "per_cot": [p],
                     "status": "ok" if p is not None else "parse_failure", "meta": {}})
    return rows


def pair_rows(outcomes: dict[str, list[tuple[str, float, float]]]) -> list[dict]:
    """``{section: [(subset, chosen_score, rejected_score), ...]}`` -> RewardBench-style rows."""
    rows = []
    number = 0
    for section, pairs in outcomes.items():
        for subset, chosen, rejected in pairs:
            for side, score in (("chosen", chosen), ("rejected", rejected)):
                rows.append({"id": f"{number}-{side}", "gold": None, "prediction": score, "per_cot": [score],
                             "status": "ok", "meta": {"subset": subset, "section": section, "pair_id": number,
                                                      "side": side}})
            number += 1
    return rows


def make_runs(out: Path) -> Path:
    """Three judges on Vicuna, MT Bench and RewardBench with a known ranking: alpha > beta > gamma.

    beta has one parse failure on Vicuna.
    """
    gold = np.array(GOLD)
    noise = np.array([0.3, -0.2, 0.1, -0.3, 0.2, -0.1, 0.3, -0.2, 0.1, -0.3])
    predictions = {
        "alpha": gold + 0.2 * noise,
        "beta": gold + 2.0 * noise,
        "gamma": gold[::-1] * 0.3 + gold * 0.4 + 1.5 * noise,
    }
    for judge, pred in predictions.items():
        vicuna = [round(float(p), 4) for p in pred]
        if judge == "beta":
            vicuna[3] = None
        write_run(out, judge, "vicuna", absolute_rows(GOLD, vicuna))
        write_run(out, judge, "mt-bench", absolute_rows(GOLD, [round(float(p), 4) for p in pred[::-1]][::-1], "m"))
    wins = {"alpha": 4, "beta": 3, "gamma": 1}
    for judge, won in wins.items():
        pairs = {section: [(subset, 5.0 if k < won else 2.0, 3.0) for k in range(4)]
                 for section, subset in (("Chat", "alpacaeval-easy"), ("Chat Hard", "llmbar-natural"),
                                         ("Safety", "donotanswer"), ("Reasoning", "math-prm"))}
        pairs["Reasoning"] += [("hep-python", 3.0, 3.0), ("hep-go", 4.0, 1.0)]
        write_run(out, judge, "rewardbench", pair_rows(pairs))
    return out
