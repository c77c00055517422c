"""What a table cell measures, computed from the prediction rows of a run.

Correlations and RewardBench accuracy are recomputed from ``predictions.jsonl`` (not copied from
``metrics.json``) so that the same code yields point values, bootstrap replicates and paired
differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..metrics import LEADERBOARD, SectionScheme, leaderboard_score
from ..records import PairMeta, Prediction
from .runs import Run, RunFormatError


@dataclass(frozen=True)
class Measure:
    key: str  # what --metrics takes
    field: str  # name in metrics.json
    markdown: str
    latex: str
    higher_is_better: bool = True


MEASURES = {
    "r": Measure("r", "pearson", "r", r"$r$"),
    "rho": Measure("rho", "spearman", "ρ", r"$\rho$"),
    "tau": Measure("tau", "kendall", "τ", r"$\tau$"),
    "rmse": Measure("rmse", "rmse", "RMSE", "RMSE", higher_is_better=False),
}
DEFAULT_MEASURES = ("r", "rho")


def parse_measures(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MEASURES]
    if unknown or not keys:
        raise ConfigError(f"unknown metric(s) {unknown or text!r}; choose from {', '.join(MEASURES)}")
    return keys


# -- absolute benchmarks -----------------------------------------------------------------

@dataclass
class AbsoluteData:
    keys: list[str]  # sample keys of the usable rows, sorted
    gold: np.ndarray
    prediction: np.ndarray
    n_total: int
    parse_failures: int

    @property
    def n(self) -> int:
        return len(self.keys)

    def subset(self, keys: list[str]) -> "AbsoluteData":
        index = {k: i for i, k in enumerate(self.keys)}
        take = [index[k] for k in keys]
        return AbsoluteData(list(keys), self.gold[take], self.prediction[take], self.n_total, self.parse_failures)


def absolute_data(run: Run) -> AbsoluteData:
    """Rows with both a gold label and a prediction (parse failures under the 'exclude' policy drop out)."""
    usable = sorted((r.key, float(r.gold), float(r.prediction)) for r in run.rows if r.scored)
    return AbsoluteData(
        keys=[k for k, _, _ in usable],
        gold=np.array([g for _, g, _ in usable]),
        prediction=np.array([p for _, _, p in usable]),
        n_total=len(run.rows),
        parse_failures=sum(r.unscored for r in run.rows),
    )


def absolute_measures(keys: list[str], gold: np.ndarray, prediction: np.ndarray) -> list[float]:
    """Correlation / error values (``MEASURES`` keys) from the package metrics; nan where undefined."""
    from ..metrics import correlation_metrics

    fields = [MEASURES[k].field for k in keys]
    values = correlation_metrics(gold, prediction, [f for f in fields if f != "rmse"])
    return [math.nan if values[MEASURES[k].field] is None else float(values[MEASURES[k].field]) for k in keys]


def absolute_measure(key: str, gold: np.ndarray, prediction: np.ndarray) -> float:
    return absolute_measures([key], gold, prediction)[0]


# -- pairwise benchmarks (RewardBench) ------------------------------------------------------

@dataclass
class PairData:
    keys: list[str]  # subset/pair_id of the judged pairs, sorted
    subsets: np.ndarray
    sections: np.ndarray
    outcomes: np.ndarray  # 1 chosen > rejected, 0.5 tie (or an unscored side, rule 'half'), 0 otherwise
    n_pairs: int  # pairs in the run, scored or not
    parse_failures: int
    scheme: SectionScheme  # sections and subset weights, as the run was scored

    @property
    def n(self) -> int:
        return len(self.keys)

    def subset(self, keys: list[str]) -> "PairData":
        index = {k: i for i, k in enumerate(self.keys)}
        take = [index[k] for k in keys]
        return PairData(list(keys), self.subsets[take], self.sections[take], self.outcomes[take],
                        self.n_pairs, self.parse_failures, self.scheme)

    def strata(self) -> list[np.ndarray]:
        """Row positions per resampling stratum: a section, less any subset carrying at least half its
        section's weight, which is a stratum of its own (RewardBench: math-prm in Reasoning).

        Resampling within these keeps the sections present and a dominant subset's share fixed, while small
        subsets (a few pairs under --limit) still vary; strata by subset would freeze every one-pair subset.
        """
        weights = self.scheme.weights
        total = {name: sum(weights[n] for n in subsets) for name, subsets in self.scheme.sections.items()}
        labels = np.array([f"{sec}/{sub}" if 2 * weights[sub] >= total[sec] else sec
                           for sec, sub in zip(self.sections, self.subsets)], dtype=object)
        return [np.flatnonzero(labels == label) for label in sorted(set(labels.tolist()))]


def pair_data(run: Run) -> PairData:
    """Chosen/rejected outcomes of the judged pairs, paired and scored by the package metrics with the rule
    the run was scored with (``Run.unparsed_pairs``: an unscored side is 0.5 as reward-bench, or left out)."""
    from ..metrics import pair_outcomes

    for number, row in enumerate(run.rows, start=1):
        if row.pair is None:
            raise RunFormatError(f"{run.path}/predictions.jsonl: row {number} (id {row.id}) names no pair "
                                 f"(meta lacks {', '.join(PairMeta.FIELDS)})")
    pairs = pair_outcomes(run.rows, run.unparsed_pairs)
    scheme = run.section_scheme()
    unknown = sorted({p["subset"] for p in pairs.values()} - set(scheme.weights))
    if unknown:
        raise RunFormatError(f"{run.path}: subsets {unknown} are in none of the benchmark's sections "
                             f"({', '.join(scheme.sections)})")
    usable = sorted((str(pid), p["subset"], p["section"], p["outcome"]) for pid, p in pairs.items()
                    if p["outcome"] is not None)
    return PairData(
        keys=[u[0] for u in usable],
        subsets=np.array([u[1] for u in usable], dtype=object),
        sections=np.array([u[2] for u in usable], dtype=object),
        outcomes=np.array([u[3] for u in usable], dtype=float),
        n_pairs=len(pairs),
        parse_failures=sum(r.unscored for r in run.rows),
        scheme=scheme,
    )


def pairwise_scores(subsets: np.ndarray, outcomes: np.ndarray, scheme: SectionScheme) -> dict[str, float]:
    """Section scores (in the scheme's order) and the leaderboard score (``LEADERBOARD``) from outcome
    arrays, by the one rule of ``metrics.SectionScheme.section_scores``; arrays keep bootstrap resamples fast."""
    accuracy = {str(name): float(outcomes[subsets == name].mean()) for name in np.unique(subsets)}
    scores = scheme.section_scores(accuracy)
    if scores:
        scores[LEADERBOARD] = leaderboard_score(scores)
    return scores
