"""The sample browser's data: each run's rows as plain JSON, written into a ``.js`` file the pages load with
``<script src>`` (browsers refuse ``fetch()`` of ``file://`` URLs, a script tag works offline).

Every string here is model output or benchmark data: the pages show it with ``textContent`` only, and the
file escapes ``<``, ``>`` and ``&`` so not even ``</script>`` appears literally in it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...records import Prediction
from ..runs import Run

# Where each protocol's score comes from, as the sample browser marks it in a CoT
READ_AT_END = "score read here"
READOUT_LABELS = {
    "cot-rail": READ_AT_END,
    "score-only-rail": READ_AT_END,
    "cot-decode": "score token sampled after this (+ the delimiter)",
    "score-only-decode": "score token sampled here",
    "prometheus": "score parsed from [RESULT]",
}
_JS_UNSAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                            "\u2029": "\\u2029"})


def _first_error(row: Prediction) -> str:
    return row.errors[0] if row.errors else ""


def sample_record(row: Prediction) -> dict:
    """What the browser shows of one judged sample."""
    error = None
    if row.gold is not None and row.prediction is not None:
        error = abs(row.prediction - row.gold)
    return {
        "key": row.key, "id": row.id, "gold": row.gold, "prediction": row.prediction,
        "status": row.status, "error": _first_error(row), "abs_error": error, "per_cot": row.per_cot,
        "cots": row.cots, "score_probs": row.score_probs, "candidate_mass": row.candidate_mass,
        "missing_candidates": row.missing_candidates, "finish_reasons": row.finish_reasons,
        "forced": row.forced, "cut": row.cut, "retries": row.retries, "errors": row.errors, "input": row.input,
        "prompt_tokens": row.prompt_tokens, "generated_tokens": row.generated_tokens, "seconds": row.seconds,
        "meta": row.meta,
    }


def pair_records(rows: list[Prediction]) -> list[dict]:
    """RewardBench: the chosen and rejected rows of each pair, by index into ``rows``; ``margin`` is
    chosen minus rejected (negative: the judge preferred the rejected response)."""
    pairs: dict[str, dict] = {}
    for index, row in enumerate(rows):
        pair = row.pair
        if pair is None:  # a row of no pair
            continue
        record = pairs.setdefault(pair.pair_id, {"id": pair.pair_id, "subset": pair.subset, "section": pair.section,
                                                 "chosen": None, "rejected": None})
        record[pair.side] = index
    for record in pairs.values():
        scores = [rows[record[s]].prediction if record[s] is not None else None for s in ("chosen", "rejected")]
        record["margin"] = scores[0] - scores[1] if None not in scores else None
    return list(pairs.values())


def run_data(run: Run, protocol: str | None) -> dict:
    records = [sample_record(row) for row in run.rows]
    scale = list(run.manifest.scale or (1, 5))
    data = {"judge": run.judge, "bench": run.bench, "kind": "pairwise" if run.pairwise else "absolute",
            "scale": scale, "protocol": protocol, "readout_label": READOUT_LABELS.get(protocol or "", READ_AT_END),
            "rows": records}
    if run.pairwise:
        data["pairs"] = pair_records(run.rows)
    return data


def script_json(value) -> str:
    """JSON that is also a safe JavaScript expression inside any HTML context (no ``<``, ``>``, ``&``)."""
    # NaN and Infinity, which Python's json writes for such floats, are valid JavaScript expressions
    return json.dumps(value, ensure_ascii=False).translate(_JS_UNSAFE)


def write_data_script(path: Path, slug: str, data: dict) -> None:
    """``window.TRACT_VIEW[slug] = {...}``: the run's rows for the pages that load this file."""
    path.write_text("window.TRACT_VIEW = window.TRACT_VIEW || {};\n"
                    f"window.TRACT_VIEW[{script_json(slug)}] = {script_json(data)};\n", encoding="utf-8")
