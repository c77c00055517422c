"""Seeded bootstrap: stratified resampling, percentile confidence intervals and two-sided p-values.

``scipy.stats.bootstrap`` resamples one set of paired observations; an Average over several
benchmarks (resampled independently, sizes kept) and RewardBench (pairs resampled within each
section, so the leaderboard weights stay fixed) need strata, hence this small engine.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass
class Estimate:
    """A point value with an optional bootstrap interval (and p-value, for differences)."""

    value: float
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    resamples: int = 0
    undefined_resamples: int = 0  # e.g. a constant resample has no correlation

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def stream_seed(seed: int, *labels: str) -> np.random.Generator:
    """One random stream per (seed, labels): the same benchmark resamples the same rows for every judge."""
    digest = hashlib.sha256("\0".join([str(seed), *labels]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def replicates(strata: Sequence[np.ndarray], statistic: Callable[[np.ndarray], object],
               n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``statistic`` of ``n_resamples`` resamples, shape ``(n_resamples, ...)``.

    Each stratum (an array of row positions) is resampled with replacement at its own size; the
    statistic receives the concatenated positions. Paired comparisons pass the same positions to
    both judges' aligned arrays.
    """
    if not strata or any(len(s) == 0 for s in strata):
        raise ValueError("cannot bootstrap an empty stratum")
    out = []
    for _ in range(n_resamples):
        positions = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        out.append(statistic(positions))
    return np.asarray(out, dtype=float)


def estimate(value: float, reps: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
             null: float | None = None) -> Estimate:
    """Percentile interval from the replicates; with ``null``, the two-sided bootstrap p-value for it."""
    finite = reps[np.isfinite(reps)]
    result = Estimate(value=value, resamples=len(reps), undefined_resamples=int(len(reps) - len(finite)))
    if len(finite) == 0:
        return result
    tail = (1.0 - confidence) / 2.0 * 100.0
    result.low, result.high = (float(v) for v in np.percentile(finite, [tail, 100.0 - tail]))
    if null is not None:
        below = (np.sum(finite <= null) + 1) / (len(finite) + 1)
        above = (np.sum(finite >= null) + 1) / (len(finite) + 1)
        result.p_value = float(min(1.0, 2.0 * min(below, above)))
    return result
