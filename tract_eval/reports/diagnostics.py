"""Judge diagnostics from stored runs: is the score distribution calibrated, where does the judge fail, does
it reward length, and what does it cost (``tract-eval diagnose``; no model is loaded).

A row's distribution ``p`` is the mean over its CoTs of each CoT's ``score_probs`` renormalised over the
scale's points; ``g`` is the gold score, ``y`` gold rounded half up to a scale point, ``F`` the step CDF
of ``p``. Rows without a distribution (decode judges, failures, incomplete top-k readouts) are left out
of the distribution metrics and counted. Each definition is on the function that computes it; the
documentation page is docs/diagnose.md.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import numpy as np

from ..benchmarks.base import find_card_or_none
from ..errors import UserError
from ..metrics import correlation_metrics
from ..records import RESULTS, Prediction, read_json_object, write_json_atomic
from .runs import Run, RunFormatError, collect_runs, load_run

DIAGNOSTICS = "diagnostics.json"
ECE_BINS = 10
COVERAGE_LEVELS = ("0.5", "0.8", "0.9")
NLL_FLOOR = 1e-12
# F(k) >= a is read with this slack: F is a float sum of probabilities, and 0.1 + 0.2 < 0.3 in floats
CDF_SLACK = 1e-12


# -- reading rows -----------------------------------------------------------------------------------------

def checked_rows(run: Run) -> list[Prediction]:
    """The run's rows, each checked for the fields diagnose reads beyond what the typed reader checks, so a
    malformed file fails naming its row and field instead of mid-computation."""
    path = run.path / "predictions.jsonl"
    for number, row in enumerate(run.rows, start=1):
        _check_row(path, number, row)
    return run.rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_row(path: Path, number: int, row: Prediction) -> None:
    def bad(name: str, why: str):
        return RunFormatError(f"{path}: row {number} field {name!r}: {why}")

    for name in ("score_probs", "raw_probs"):
        value = getattr(row, name)
        if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
            raise bad(name, "expected a list of {score: probability} objects, one per CoT")
        for probs in value:
            for key, p in probs.items():
                if not _is_int_text(key) or not _is_number(p) or p < 0:
                    raise bad(name, f"entry {key!r}: {p!r} is not a score with a probability >= 0")
    for name in ("prompt_tokens", "generated_tokens", "seconds"):
        if not _is_number(getattr(row, name)):
            raise bad(name, f"{getattr(row, name)!r} is not a number")


def _is_int_text(key) -> bool:
    try:
        return str(int(key)) == str(key).strip()
    except (TypeError, ValueError):
        return False


def run_scale(run: Run) -> tuple[int, int]:
    """The scale's lowest and highest points: as the run's manifest records its benchmark (``bench.scale``),
    else the benchmark card of the folder's name, else the judge's configured scale."""
    source = run.manifest.bench.get("scale")
    if source is None:
        card = find_card_or_none(run.bench)
        source = list(card.scale) if card is not None else run.manifest.judge.get("scale")
    if (not isinstance(source, (list, tuple)) or len(source) != 2 or not all(isinstance(v, int) for v in source)
            or source[0] >= source[1]):
        raise RunFormatError(f"{run.path}: the scale is unknown (its manifest.json records no bench.scale or "
                             f"judge.scale [low, high], and no benchmark card is named {run.bench!r})")
    return int(source[0]), int(source[1])


# -- one row's distribution -------------------------------------------------------------------------------

def round_half_up(value: float, low: int, high: int) -> int:
    """``value`` rounded half up (2.5 -> 3), then clipped to the scale: a point of the scale."""
    return min(max(math.floor(value + 0.5), low), high)


def row_distribution(row: Prediction, points: np.ndarray) -> np.ndarray | None:
    """``p`` over ``points``: the mean over CoTs of each CoT's ``score_probs`` renormalised over the scale;
    None for a row without one (no score_probs, a failed or incomplete row, or no mass on the scale)."""
    if row.status != "ok" or not row.score_probs:
        return None
    per_cot = []
    for probs in row.score_probs:
        on_scale = np.array([float(probs.get(str(k), 0.0)) for k in points])
        total = on_scale.sum()
        if total <= 0:
            return None
        per_cot.append(on_scale / total)
    return np.mean(per_cot, axis=0)


def raw_mass(row: Prediction, points: np.ndarray) -> float | None:
    """Mean over CoTs of the raw (full-vocabulary) probability on the scale's candidates."""
    if not row.raw_probs:
        return None
    return float(np.mean([sum(float(probs.get(str(k), 0.0)) for k in points) for probs in row.raw_probs]))


def quantile(cdf: np.ndarray, points: np.ndarray, level: float) -> int:
    """``q(a)``: the smallest scale point whose ``F`` is at least ``a``."""
    index = int(np.argmax(cdf >= level - CDF_SLACK))
    return int(points[index])


def mode(p: np.ndarray, points: np.ndarray) -> int:
    """The most probable point, ties to the lower score (``argmax`` takes the first)."""
    return int(points[int(np.argmax(p))])


def crps(p: np.ndarray, points: np.ndarray, gold: float) -> float:
    """``∫ (F(x) − 1[x ≥ g])² dx`` over [low, high], exactly: on [k, k+1) ``F`` is the constant ``F(k)`` and
    the indicator switches once, at ``g``."""
    cdf = np.cumsum(p)
    total = 0.0
    for k, f in zip(points[:-1], cdf[:-1]):
        below = min(max(gold - k, 0.0), 1.0)  # the part of [k, k+1) left of g, where the indicator is 0
        total += f * f * below + (f - 1.0) ** 2 * (1.0 - below)
    return float(total)


@dataclass
class ScoredDistribution:
    """What the calibration and readout metrics need of one row."""

    p: np.ndarray
    gold: float
    mass: float | None


def distribution_rows(rows: list[Prediction], points: np.ndarray) -> tuple[list[ScoredDistribution], dict]:
    """Rows with a distribution and a gold score, and why the others were left out (counted per reason)."""
    used, left_out = [], Counter()
    for row in rows:
        p = row_distribution(row, points)
        if p is None:
            left_out["no distribution" if row.status == "ok" else row.status] += 1
        elif row.gold is None:
            left_out["no gold"] += 1
        else:
            used.append(ScoredDistribution(p, float(row.gold), raw_mass(row, points)))
    return used, dict(sorted(left_out.items()))


# -- absolute benchmarks ----------------------------------------------------------------------------------

def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def calibration(used: list[ScoredDistribution], points: np.ndarray) -> dict:
    """Top-label ECE over 10 equal-width confidence bins (bin b holds confidences in [b/10, (b+1)/10), 1.0
    in the last), Brier score, NLL, CRPS and central-interval coverage."""
    low, high = int(points[0]), int(points[-1])
    confidence = np.array([d.p.max() for d in used])
    y = np.array([round_half_up(d.gold, low, high) for d in used])
    correct = np.array([mode(d.p, points) == t for d, t in zip(used, y)], dtype=float)
    which = np.minimum(np.floor(confidence * ECE_BINS).astype(int), ECE_BINS - 1) if used else np.array([], int)
    bins, ece = [], 0.0
    for b in range(ECE_BINS):
        inside = which == b
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(correct[inside].mean()) if count else None
        if count:
            ece += count / len(used) * abs(acc - conf)
        bins.append({"low": b / ECE_BINS, "high": (b + 1) / ECE_BINS, "count": count, "confidence": conf,
                     "accuracy": acc})
    onehot = [(points == t).astype(float) for t in y]
    return {
        "n": len(used),
        "ece": float(ece) if used else None,
        "bins": bins,
        "accuracy": _mean(correct),
        "brier": _mean(float(((d.p - o) ** 2).sum()) for d, o in zip(used, onehot)),
        "nll": _mean(-math.log(max(float(d.p[points == t][0]), NLL_FLOOR)) for d, t in zip(used, y)),
        "crps": _mean(crps(d.p, points, d.gold) for d in used),
        "coverage": {level: _coverage(used, points, level) for level in COVERAGE_LEVELS},
    }


def _coverage(used: list[ScoredDistribution], points: np.ndarray, level: str) -> float | None:
    """Share of rows whose gold lies in ``[q((1−l)/2), q((1+l)/2)]`` (the levels as exact decimals)."""
    exact = Fraction(level)
    lower, upper = float((1 - exact) / 2), float((1 + exact) / 2)
    inside = []
    for d in used:
        cdf = np.cumsum(d.p)
        inside.append(quantile(cdf, points, lower) <= d.gold <= quantile(cdf, points, upper))
    return _mean(inside)


def _correlations(gold, values) -> dict:
    measured = correlation_metrics(gold, values)
    return {"pearson": measured["pearson"], "spearman": measured["spearman"]}


def readouts(used: list[ScoredDistribution], points: np.ndarray) -> dict:
    """Pearson and Spearman against gold of the distribution's mean, mode and median."""
    gold = [d.gold for d in used]
    return {
        "n": len(used),
        "mean": _correlations(gold, [float((points * d.p).sum()) for d in used]),
        "mode": _correlations(gold, [mode(d.p, points) for d in used]),
        "median": _correlations(gold, [quantile(np.cumsum(d.p), points, 0.5) for d in used]),
    }


def entropy(p: np.ndarray) -> float:
    """``−Σ p_k ln p_k`` in nats (0 ln 0 = 0)."""
    positive = p[p > 0]
    return float(-(positive * np.log(positive)).sum())


def distribution_summary(rows: list[Prediction], points: np.ndarray) -> dict:
    """Mean entropy and mean raw candidate mass of every row with a distribution (gold or not)."""
    with_p = [(row_distribution(r, points), r) for r in rows]
    with_p = [(p, r) for p, r in with_p if p is not None]
    masses = [m for m in (raw_mass(r, points) for _, r in with_p) if m is not None]
    return {"n": len(with_p), "without": len(rows) - len(with_p), "entropy": _mean(entropy(p) for p, _ in with_p),
            "candidate_mass": _mean(masses)}


def failures(rows: list[Prediction], low: int, high: int) -> dict:
    """Rows per status, and Pearson/Spearman/RMSE with failures excluded and with failures at the midpoint."""
    graded = [r for r in rows if r.gold is not None]
    kept = [r for r in graded if not r.unscored]
    midpoint = (low + high) / 2

    def measured(pairs) -> dict:
        pairs = list(pairs)
        values = correlation_metrics([g for g, _ in pairs], [p for _, p in pairs])
        return {"n": values["n"], "pearson": values["pearson"], "spearman": values["spearman"], "rmse": values["rmse"]}

    return {
        "statuses": dict(sorted(Counter(r.status for r in rows).items())),
        "failed": sum(r.unscored for r in rows),
        "excluded": measured((r.gold, r.prediction) for r in kept),
        "at_midpoint": {"midpoint": midpoint, **measured(
            (r.gold, midpoint if r.unscored else r.prediction) for r in graded)},
    }


# The krippendorff package builds a (units x values x values) array: continuous predictions have about as
# many distinct values as units, so 3,000 rows would need 200 GiB. Above this many array cells the interval α
# is computed by its closed form instead (equal to the package's to 1e-12, tests/test_diagnostics.py).
PACKAGE_ALPHA_CELLS = 20_000_000


def _alpha(data, level: str, domain=None, package_cells: int = PACKAGE_ALPHA_CELLS) -> float | None:
    """Krippendorff's α (rows of ``data`` are coders, columns units, NaN missing) from the ``krippendorff``
    package; None where it is undefined (fewer than two units, or one value in all)."""
    import krippendorff

    matrix = np.asarray(data, dtype=float)
    values = np.unique(matrix[~np.isnan(matrix)])
    if matrix.shape[1] < 2 or len(values) < 2:
        return None
    if level == "interval" and matrix.shape[1] * len(values) ** 2 > package_cells:
        return interval_alpha_closed_form(matrix)
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level, value_domain=domain))


def interval_alpha_closed_form(matrix: np.ndarray) -> float | None:
    """Interval α = 1 − (n − 1) Σ_u Σ_{i≠j∈u} (v_i − v_j)² / (m_u − 1) / Σ_{i≠j} (v_i − v_j)², over the units
    with at least two values (m_u of them; n in all): the package's coincidence-matrix sums, written per unit.
    Each Σ_{i≠j} (v_i − v_j)² over m values is 2 (m Σ v² − (Σ v)²)."""
    def spread(v: np.ndarray) -> float:
        return 2.0 * (len(v) * float((v * v).sum()) - float(v.sum()) ** 2)

    units = [col[~np.isnan(col)] for col in matrix.T]
    units = [u for u in units if len(u) >= 2]
    pooled = np.concatenate(units) if units else np.array([])
    expected = spread(pooled)
    if expected == 0:
        return None
    observed = sum(spread(u) / (len(u) - 1) for u in units)
    return float(1.0 - (len(pooled) - 1) * observed / expected)


def agreement(rows: list[Prediction], low: int, high: int) -> dict:
    """Prediction vs gold (failures excluded): α interval on the values as they are, α ordinal and
    quadratic-weighted Cohen's κ (scikit-learn) on both rounded half up to scale points."""
    from sklearn.metrics import cohen_kappa_score

    kept = [r for r in rows if r.gold is not None and not r.unscored]
    pred = [float(r.prediction) for r in kept]
    gold = [float(r.gold) for r in kept]
    points = list(range(low, high + 1))
    pred_r = [round_half_up(v, low, high) for v in pred]
    gold_r = [round_half_up(v, low, high) for v in gold]
    kappa = None
    if len(kept) >= 2 and len(set(pred_r) | set(gold_r)) > 1:
        kappa = float(cohen_kappa_score(gold_r, pred_r, labels=points, weights="quadratic"))
    out = {"n": len(kept), "krippendorff_alpha_interval": _alpha([pred, gold], "interval"),
           "krippendorff_alpha_ordinal": _alpha([pred_r, gold_r], "ordinal", points), "weighted_kappa": kappa,
           "within_judge_cots_alpha_interval": within_judge_alpha(rows)}
    return out


def within_judge_alpha(rows: list[Prediction]) -> float | None:
    """α (interval) across a judge's CoTs, each CoT a coder and each row a unit; None when n_cot is 1."""
    n_cot = max((len(r.per_cot) for r in rows), default=0)
    if n_cot < 2:
        return None
    matrix = [[r.per_cot[c] if c < len(r.per_cot) and r.per_cot[c] is not None else math.nan for r in rows]
              for c in range(n_cot)]
    return _alpha(matrix, "interval")


def response_chars(row: Prediction) -> int | None:
    value = row.meta.get("response_chars")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def length_bias(rows: list[Prediction]) -> dict:
    """Spearman of the residual (prediction − gold) and of the prediction with the response's length."""
    kept = [r for r in rows if r.gold is not None and not r.unscored and response_chars(r) is not None]
    lengths = [response_chars(r) for r in kept]
    out = {"n": len(kept),
           "residual_spearman": correlation_metrics(lengths, [r.prediction - r.gold for r in kept])["spearman"],
           "prediction_spearman": correlation_metrics(lengths, [r.prediction for r in kept])["spearman"]}
    if not kept and rows:
        out["note"] = "no row records meta.response_chars (runs written before rows recorded it)"
    return out


def cost(rows: list[Prediction]) -> dict:
    """Per judged sample (rows not skipped as too long): mean prompt tokens, generated tokens and seconds;
    totals. ``seconds`` is what the run recorded per row (a batch's rows share its time)."""
    judged = [r for r in rows if r.status != "too_long"]
    names = ("prompt_tokens", "generated_tokens", "seconds")
    return {"n": len(judged),
            "mean": {name: _mean(getattr(r, name) for r in judged) for name in names},
            "total": {name: float(sum(getattr(r, name) for r in judged)) for name in names}}


def absolute_diagnostics(rows: list[Prediction], low: int, high: int) -> dict:
    points = np.arange(low, high + 1)
    used, left_out = distribution_rows(rows, points)
    return {
        "calibration": {**calibration(used, points), "left_out": left_out},
        "readouts": readouts(used, points),
        "distribution": distribution_summary(rows, points),
        "agreement": agreement(rows, low, high),
        "failures": failures(rows, low, high),
        "length_bias": length_bias(rows),
        "cost": cost(rows),
    }


# -- pairwise benchmarks ----------------------------------------------------------------------------------

MARGIN_BINS = ((0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, math.inf))  # of |margin|; the first: ties


@dataclass
class Pair:
    chosen: Prediction
    rejected: Prediction

    @property
    def margin(self) -> float | None:
        if self.chosen.unscored or self.rejected.unscored:
            return None
        return float(self.chosen.prediction - self.rejected.prediction)


def pairs_of(rows: list[Prediction], path: Path) -> list[Pair]:
    sides: dict[str, dict[str, Prediction]] = {}
    for row in rows:
        pair = row.pair
        if pair is None or pair.side not in ("chosen", "rejected"):
            raise RunFormatError(f"{path}: row {row.id!r} of a pairwise run has no meta.pair_id and meta.side "
                                 "(chosen or rejected)")
        sides.setdefault(pair.pair_id, {})[pair.side] = row
    return [Pair(s["chosen"], s["rejected"]) for s in sides.values() if len(s) == 2]


def pair_accuracy(margins) -> float | None:
    """Chosen above rejected counts 1, a tie 0.5 (as reward-bench), below 0."""
    return _mean(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)


def _in_margin_bin(value: float, low: float, high: float) -> bool:
    return value == 0 if high == 0 else low <= value < high and value > 0


def pairwise_diagnostics(rows: list[Prediction], low: int, high: int, path: Path) -> dict:
    pairs = pairs_of(rows, path)
    scored = [p for p in pairs if p.margin is not None]
    margins = np.array([p.margin for p in scored])
    span = high - low
    edges = np.arange(-span, span + 0.5, 0.5)
    counts = np.histogram(margins, bins=edges)[0] if scored else np.zeros(len(edges) - 1, int)
    by_bin = []
    for lo, hi in MARGIN_BINS:
        inside = [m for m in margins if _in_margin_bin(abs(m), lo, hi)]
        by_bin.append({"abs_low": lo, "abs_high": None if math.isinf(hi) else hi, "count": len(inside),
                       "accuracy": pair_accuracy(inside)})
    return {
        "pairs": {"n": len(pairs), "scored": len(scored), "unscored": len(pairs) - len(scored)},
        "accuracy": pair_accuracy(margins),
        "tie_rate": _mean(m == 0 for m in margins),
        "margin": {"mean": _mean(margins), "std": float(margins.std()) if scored else None,
                   "quantiles": {q: float(np.quantile(margins, float(q))) if scored else None
                                 for q in ("0", "0.25", "0.5", "0.75", "1")},
                   "histogram": {"edges": edges.tolist(), "counts": [int(c) for c in counts]}},
        "accuracy_by_margin": by_bin,
        "length_bias": pair_length_split(scored),
        "distribution": distribution_summary(rows, np.arange(low, high + 1)),
        "agreement": {"within_judge_cots_alpha_interval": within_judge_alpha(rows)},
        "failures": {"statuses": dict(sorted(Counter(r.status for r in rows).items())),
                     "failed": sum(r.unscored for r in rows)},
        "cost": cost(rows),
    }


def pair_length_split(scored: list[Pair]) -> dict:
    """Accuracy on the pairs whose chosen response is the longer, the shorter, or as long as the rejected one."""
    groups: dict[str, list[float]] = {"chosen_longer": [], "chosen_shorter": [], "same_length": []}
    unknown = 0
    for pair in scored:
        a, b = response_chars(pair.chosen), response_chars(pair.rejected)
        if a is None or b is None:
            unknown += 1
            continue
        groups["chosen_longer" if a > b else "chosen_shorter" if a < b else "same_length"].append(pair.margin)
    out = {name: {"n": len(m), "accuracy": pair_accuracy(m)} for name, m in groups.items()}
    if unknown:
        out["unknown_length"] = unknown
    return out


# -- one run ----------------------------------------------------------------------------------------------

def diagnose_run(run: Run) -> dict:
    """Every diagnostic of one run (absolute or pairwise), as ``diagnostics.json`` holds it."""
    low, high = run_scale(run)
    rows = checked_rows(run)
    kind = "pairwise" if run.pairwise else "absolute"
    head = {"judge": run.judge, "bench": run.bench, "kind": kind, "scale": [low, high], "n": len(rows)}
    if kind == "pairwise":
        return {**head, **pairwise_diagnostics(rows, low, high, run.path)}
    return {**head, **absolute_diagnostics(rows, low, high)}


def mean_distribution_by_gold(run: Run) -> tuple[list[int], dict[int, tuple[np.ndarray, int]]]:
    """For the distribution plot: per gold point ``y``, the mean ``p`` of its rows and their number."""
    low, high = run_scale(run)
    points = np.arange(low, high + 1)
    used, _ = distribution_rows(checked_rows(run), points)
    grouped: dict[int, list[np.ndarray]] = {}
    for d in used:
        grouped.setdefault(round_half_up(d.gold, low, high), []).append(d.p)
    return points.tolist(), {y: (np.mean(ps, axis=0), len(ps)) for y, ps in sorted(grouped.items())}



# -- writing and the API ----------------------------------------------------------------------------------

class DiagnosticsWriteError(UserError, OSError):
    """diagnostics.json, a plot or results.json could not be written into a run folder."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_diagnostics(folder: str | Path | Run, between_judges: dict | None = None) -> dict:
    """Compute one run's diagnostics, write ``diagnostics.json`` and the plots into its folder, and add the
    diagnostics to its ``results.json``. ``between_judges``: α with other judges (``--agreement``)."""
    run = folder if isinstance(folder, Run) else load_run(Path(folder))
    diagnostics = diagnose_run(run)
    if between_judges is not None:
        diagnostics.setdefault("agreement", {})["between_judges"] = between_judges
    try:
        diagnostics["plots"] = write_plots(run, diagnostics)
        write_json_atomic(run.path / DIAGNOSTICS, diagnostics)
        _update_results(run, diagnostics)
    except OSError as exc:
        raise DiagnosticsWriteError(f"{run.path}: cannot write the diagnostics there ({exc.strerror or exc})") from exc
    return diagnostics


def write_plots(run: Run, diagnostics: dict, folder: Path | None = None) -> list[str]:
    """Both plots, into ``folder`` (default: the run's own), where the run has distributions with gold; plots
    of an earlier computation that no longer apply are removed, so a folder never shows a picture of other
    numbers."""
    from .diagnose_plots import DISTRIBUTION_PLOT, RELIABILITY_PLOT, plot_distribution, plot_reliability

    folder = Path(folder) if folder is not None else run.path
    if diagnostics["kind"] != "absolute" or not diagnostics["calibration"]["n"]:
        for name in (RELIABILITY_PLOT, DISTRIBUTION_PLOT):
            (folder / name).unlink(missing_ok=True)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    plot_reliability(diagnostics, folder / RELIABILITY_PLOT)
    points, by_gold = mean_distribution_by_gold(run)
    plot_distribution(diagnostics, points, by_gold, folder / DISTRIBUTION_PLOT)
    return [RELIABILITY_PLOT, DISTRIBUTION_PLOT]


def _update_results(run: Run, diagnostics: dict) -> None:
    """``results.json`` (written by ``run``) gains a ``diagnostics`` key; a run without one gets a results.json
    holding its judge, benchmark, metrics.json and the diagnostics."""
    path = run.path / RESULTS
    results = read_json_object(path)
    if results is None:
        results = {"judge": run.judge, "bench": run.bench, "metrics": run.metrics.raw}
    results["diagnostics"] = diagnostics
    write_json_atomic(path, results)


def between_judges(runs: list[Run]) -> dict[tuple[str, str], dict]:
    """α (interval) between every two judges on the same benchmark, on the samples both scored (by id)."""
    by_bench: dict[str, list[Run]] = {}
    for run in runs:
        by_bench.setdefault(run.bench, []).append(run)
    out: dict[tuple[str, str], dict] = {(r.judge, r.bench): {} for r in runs}
    for bench, group in by_bench.items():
        scored = {r.judge: {p.key: float(p.prediction)
                            for p in checked_rows(r) if not p.unscored} for r in group}
        for a, b in combinations(sorted(scored), 2):
            shared = sorted(set(scored[a]) & set(scored[b]))
            alpha = _alpha([[scored[a][k] for k in shared], [scored[b][k] for k in shared]], "interval")
            out[(a, bench)][b] = {"n": len(shared), "alpha_interval": alpha}
            out[(b, bench)][a] = {"n": len(shared), "alpha_interval": alpha}
    return out


def diagnose(path: str | Path | list, agreement: bool = False) -> dict[str, dict[str, dict]]:
    """Diagnostics of every run under ``path`` (an OUT folder, a judge folder, a run folder, or a list of
    them), written into each run folder; returns ``{judge: {bench: diagnostics}}``. ``agreement`` adds α
    between every two judges on the same benchmark."""
    runs = collect_runs(list(path) if isinstance(path, (list, tuple)) else [path])
    shared = between_judges(runs) if agreement else {}
    out: dict[str, dict[str, dict]] = {}
    for run in runs:
        out.setdefault(run.judge, {})[run.bench] = write_diagnostics(run, shared.get((run.judge, run.bench)))
    return out
