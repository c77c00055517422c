"""Agreement metrics: correlations with gold for absolute grading, accuracy for pairwise benchmarks."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np
from scipy import stats

ABSOLUTE_METRICS = ("pearson", "spearman", "kendall", "rmse")


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def correlation_metrics(gold: Iterable[float], pred: Iterable[float]) -> dict:
    """Pearson / Spearman / Kendall (with p-values) and RMSE over paired values."""
    gold = np.asarray(list(gold), dtype=float)
    pred = np.asarray(list(pred), dtype=float)
    if gold.shape != pred.shape:
        raise ValueError(f"gold has {gold.size} values, predictions {pred.size}")
    out: dict = {"n": int(gold.size)}
    constant = gold.size < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        if constant:
            out[name], out[f"{name}_p"] = None, None
        else:
            result = fn(gold, pred)
            out[name], out[f"{name}_p"] = _finite(result[0]), _finite(result[1])
    out["rmse"] = _finite(float(np.sqrt(np.mean((gold - pred) ** 2)))) if gold.size else None
    if constant and gold.size:
        out["note"] = "correlation undefined: fewer than 2 values or a constant series"
    return out


def absolute_metrics(rows: list[dict]) -> dict:
    """Metrics for an absolute benchmark from prediction rows (parse failures excluded and counted)."""
    used = [r for r in rows if r.get("prediction") is not None and r.get("gold") is not None]
    out = correlation_metrics([r["gold"] for r in used], [r["prediction"] for r in used])
    out["n_total"] = len(rows)
    out["parse_failures"] = sum(r.get("status") in ("parse_failure", "fallback") for r in rows)
    out["fallbacks"] = sum(r.get("status") == "fallback" for r in rows)
    return out


def pair_outcomes(rows: list[dict]) -> dict[str, dict]:
    """Group chosen/rejected prediction rows by pair: {pair_id: {"subset", "section", "outcome"}}.

    outcome = 1 (chosen scored higher), 0.5 (tie), 0 (rejected higher), None (a side failed to parse).
    """
    sides: dict[str, dict] = defaultdict(dict)
    for row in rows:
        meta = row.get("meta", {})
        sides[meta["pair_id"]][meta["side"]] = row
    pairs = {}
    for pair_id, both in sides.items():
        if set(both) != {"chosen", "rejected"}:
            continue  # the other side is not judged yet (limit / shard / resume)
        chosen, rejected = both["chosen"]["prediction"], both["rejected"]["prediction"]
        meta = both["chosen"]["meta"]
        if chosen is None or rejected is None:
            outcome = None
        else:
            outcome = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        pairs[pair_id] = {"subset": meta["subset"], "section": meta["section"], "outcome": outcome}
    return pairs


def pairwise_metrics(rows: list[dict], reasoning_code_prefix: str = "hep-", reasoning_math: str = "math-prm") -> dict:
    """RewardBench-style accuracy per subset, per section and the leaderboard score.

    Sections average their subsets weighted by pair counts, except Reasoning, where
    math-prm weighs as much as all hep-* subsets together (as the official leaderboard does).
    """
    pairs = pair_outcomes(rows)
    judged = [p for p in pairs.values() if p["outcome"] is not None]
    by_subset: dict[str, list[float]] = defaultdict(list)
    section_of: dict[str, str] = {}
    for pair in judged:
        by_subset[pair["subset"]].append(pair["outcome"])
        section_of[pair["subset"]] = pair["section"]
    subsets = {name: {"accuracy": float(np.mean(v)), "n": len(v)} for name, v in sorted(by_subset.items())}
    sections: dict[str, dict] = {}
    for section in sorted(set(section_of.values())):
        names = [s for s in subsets if section_of[s] == section]
        if section == "Reasoning" and reasoning_math in names and any(n.startswith(reasoning_code_prefix) for n in names):
            code = [subsets[n] for n in names if n.startswith(reasoning_code_prefix)]
            code_acc = sum(c["accuracy"] * c["n"] for c in code) / sum(c["n"] for c in code)
            acc = 0.5 * subsets[reasoning_math]["accuracy"] + 0.5 * code_acc
        else:
            acc = sum(subsets[n]["accuracy"] * subsets[n]["n"] for n in names) / sum(subsets[n]["n"] for n in names)
        sections[section] = {"accuracy": acc, "n": sum(subsets[n]["n"] for n in names)}
    outcomes = [p["outcome"] for p in judged]
    return {
        "score": float(np.mean([s["accuracy"] for s in sections.values()])) if sections else None,
        "accuracy": float(np.mean(outcomes)) if outcomes else None,
        "sections": sections,
        "subsets": subsets,
        "n_pairs": len(pairs),
        "ties": sum(o == 0.5 for o in outcomes),
        "parse_failures": sum(p["outcome"] is None for p in pairs.values()),
        "n_total": len(rows),
    }


def generation_summary(rows: list[dict]) -> dict:
    """How CoTs ended and how much probability the score candidates held, over all CoTs."""
    reasons = [r for row in rows for r in row.get("finish_reasons", [])]
    masses = [m for row in rows for m in row.get("candidate_mass", [])]
    forced = [f for row in rows for f in row.get("forced", [])]
    cuts = [c for row in rows for c in row.get("cut", [])]
    out = {"cots": len(reasons), "finish_reasons": {k: reasons.count(k) for k in sorted(set(reasons))}}
    if masses:
        out["mean_candidate_mass"] = float(np.mean(masses))
        out["delimiter_forced"] = sum(bool(f) for f in forced)
        out["cut_at_marker"] = sum(bool(c) for c in cuts)
    out["generated_tokens"] = int(sum(row.get("generated_tokens", 0) for row in rows))
    return out
