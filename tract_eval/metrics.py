"""Agreement metrics: correlations with gold for absolute grading, accuracy for pairwise benchmarks."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats

from .records import PairMeta, Prediction

CORRELATIONS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
ABSOLUTE_METRICS = (*CORRELATIONS, "rmse")


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def correlation_metrics(gold: Iterable[float], pred: Iterable[float],
                        correlations: Iterable[str] = tuple(CORRELATIONS)) -> dict:
    """Pearson / Spearman / Kendall (with p-values) and RMSE over paired values; ``correlations`` names the
    ones to compute (bootstrap replicates ask only for the measures a table shows: scipy's rank
    correlations cost most of a resample)."""
    gold = np.asarray(list(gold), dtype=float)
    pred = np.asarray(list(pred), dtype=float)
    if gold.shape != pred.shape:
        raise ValueError(f"gold has {gold.size} values, predictions {pred.size}")
    out: dict = {"n": int(gold.size)}
    constant = gold.size < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0
    for name in correlations:
        fn = CORRELATIONS[name]
        if constant:
            out[name], out[f"{name}_p"] = None, None
        else:
            result = fn(gold, pred)
            out[name], out[f"{name}_p"] = _finite(result[0]), _finite(result[1])
    out["rmse"] = _finite(float(np.sqrt(np.mean((gold - pred) ** 2)))) if gold.size else None
    if constant and gold.size:
        out["note"] = "correlation undefined: fewer than 2 values or a constant series"
    return out


def absolute_metrics(rows: list[Prediction]) -> dict:
    """Metrics for an absolute benchmark from prediction rows (parse failures excluded and counted)."""
    used = [r for r in rows if r.scored]
    out = correlation_metrics([r.gold for r in used], [r.prediction for r in used])
    out["n_total"] = len(rows)
    out["parse_failures"] = sum(r.failed for r in rows)
    out["fallbacks"] = sum(r.status == "fallback" for r in rows)
    return out


def first_run_accuracy(rows: list[Prediction]) -> float | None:
    """prometheus-eval's Feedback Bench exception (eval/utils.py:calculate_results, lines 72-88): besides the
    correlations of the runs' mean, the share of rows whose FIRST run's verdict equals the gold score, over
    all rows (in %, as it prints it). Only for judges whose runs are integer verdicts; None otherwise."""
    firsts = [(r.per_cot or [None])[0] for r in rows]
    if not rows or not any(f is not None for f in firsts):
        return None
    if any(f is not None and float(f) != int(f) for f in firsts):
        return None  # expected scores (RAIL), not verdicts
    hits = sum(f is not None and r.gold is not None and float(f) == float(r.gold) for f, r in zip(firsts, rows))
    return 100.0 * hits / len(rows)


# A pair whose chosen or rejected side has no score: reward-bench scores it 0.5 like a tie
# (scripts/run_generative.py); "exclude" leaves it out of the accuracies instead (a named departure).
UNPARSED_PAIR_POLICIES = ("half", "exclude")
LEADERBOARD = "Score"  # the mean of the section scores (the leaderboard's number), next to the sections


@dataclass(frozen=True)
class SectionScheme:
    """How a pairwise benchmark's subset accuracies roll up, as its card says: ``sections`` (in report
    order) of subsets, and each subset's weight in its section (RewardBench: reward-bench's fixed
    ``EXAMPLE_COUNTS``; a card without weights: the pairs each subset has in the data)."""

    sections: dict[str, tuple[str, ...]]
    weights: dict[str, float]

    def to_dict(self) -> dict:
        return {"sections": {name: list(subsets) for name, subsets in self.sections.items()},
                "subset_weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: dict) -> "SectionScheme":
        return cls({name: tuple(subsets) for name, subsets in data["sections"].items()},
                   {name: float(w) for name, w in data["subset_weights"].items()})

    def section_scores(self, subset_accuracy: dict[str, float]) -> dict[str, float]:
        """reward-bench ``calculate_scores_per_section``: a section is the mean of its subsets'
        accuracies weighted by the fixed subset weights (not by how many pairs were judged).
        Sections none of whose subsets were judged are left out (reward-bench would score them 0)."""
        unknown = sorted(set(subset_accuracy) - set(self.weights))
        if unknown:
            raise ValueError(f"subsets {unknown} have no weight in the benchmark's sections")
        scores = {}
        for section, names in self.sections.items():
            present = [n for n in names if n in subset_accuracy]
            if present:
                scores[section] = (sum(subset_accuracy[n] * self.weights[n] for n in present)
                                   / sum(self.weights[n] for n in present))
        return scores


def pair_outcomes(rows: list[Prediction], unparsed: str = "half") -> dict[str, dict]:
    """Group chosen/rejected prediction rows by pair: {pair_id: {"subset", "section", "outcome", "parsed"}}.

    outcome = 1 (chosen scored higher), 0.5 (tie), 0 (rejected higher); a pair with an unscored
    side gets 0.5 (``unparsed="half"``, as reward-bench) or None (``"exclude"``).
    """
    if unparsed not in UNPARSED_PAIR_POLICIES:
        raise ValueError(f"unparsed pairs: choose one of {UNPARSED_PAIR_POLICIES}, not {unparsed!r}")
    sides: dict[str, dict[str, Prediction]] = defaultdict(dict)
    for row in rows:
        pair = row.pair
        if pair is None:
            raise ValueError(f"row {row.id!r} names no pair (meta lacks {', '.join(PairMeta.FIELDS)})")
        sides[pair.pair_id][pair.side] = row
    pairs = {}
    for pair_id, both in sides.items():
        if set(both) != {"chosen", "rejected"}:
            continue  # the other side is not judged yet (limit / shard / resume)
        chosen, rejected = both["chosen"].prediction, both["rejected"].prediction
        meta = both["chosen"].pair
        parsed = chosen is not None and rejected is not None
        if parsed:
            outcome = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        else:
            outcome = 0.5 if unparsed == "half" else None
        pairs[pair_id] = {"subset": meta.subset, "section": meta.section, "outcome": outcome, "parsed": parsed}
    return pairs


def leaderboard_score(section_scores: dict[str, float]) -> float | None:
    """The leaderboard score: the mean of the section scores."""
    return float(np.mean(list(section_scores.values()))) if section_scores else None


def pairwise_metrics(rows: list[Prediction], scheme: SectionScheme, unparsed: str = "half") -> dict:
    """A pairwise benchmark as reward-bench scores RewardBench: accuracy per subset (ties and, by default,
    unscored pairs count 0.5), sections weighting their subsets by the scheme's weights, leaderboard =
    mean of the sections; ``coverage`` says which subsets and sections a partial run judged."""
    pairs = pair_outcomes(rows, unparsed)
    judged = [p for p in pairs.values() if p["outcome"] is not None]
    by_subset: dict[str, list[float]] = defaultdict(list)
    for pair in judged:
        by_subset[pair["subset"]].append(pair["outcome"])
    subsets = {name: {"accuracy": float(np.mean(v)), "n": len(v)} for name, v in sorted(by_subset.items())}
    section_scores = scheme.section_scores({n: s["accuracy"] for n, s in subsets.items()})
    mapping = scheme.sections
    sections = {name: {"accuracy": score, "n": sum(subsets[n]["n"] for n in mapping[name] if n in subsets),
                       "subsets": [n for n in mapping[name] if n in subsets]}
                for name, score in section_scores.items()}
    outcomes = [p["outcome"] for p in judged]
    missing_subsets = [n for n in scheme.weights if n not in subsets]
    return {
        "score": leaderboard_score(section_scores),
        "accuracy": float(np.mean(outcomes)) if outcomes else None,
        "sections": sections,
        "subsets": subsets,
        "n_pairs": len(pairs),
        "ties": sum(p["parsed"] and p["outcome"] == 0.5 for p in pairs.values()),
        "parse_failures": sum(not p["parsed"] for p in pairs.values()),
        "unparsed_pairs": unparsed,
        "coverage": {
            "complete": not missing_subsets,
            "subsets": {n: subsets[n]["n"] for n in subsets},
            "missing_subsets": missing_subsets,
            "sections": sorted(section_scores),
            "missing_sections": [s for s in mapping if s not in section_scores],
            "incomplete_sections": [s for s in section_scores if any(n not in subsets for n in mapping[s])],
        },
        "n_total": len(rows),
    }


def generation_summary(rows: list[Prediction]) -> dict:
    """How CoTs ended and how much probability the score candidates held, over all CoTs."""
    reasons = [r for row in rows for r in row.finish_reasons]
    masses = [m for row in rows for m in row.candidate_mass]
    forced = [f for row in rows for f in row.forced]
    cuts = [c for row in rows for c in row.cut]
    out = {"cots": len(reasons), "finish_reasons": {k: reasons.count(k) for k in sorted(set(reasons))}}
    if masses:
        out["mean_candidate_mass"] = float(np.mean(masses))
        out["delimiter_forced"] = sum(bool(f) for f in forced)
        out["cut_at_marker"] = sum(bool(c) for c in cuts)
    out["generated_tokens"] = int(sum(row.generated_tokens for row in rows))
    return out
