"""Is the difference between two judges real? Paired bootstrap over the samples both judged."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import bootstrap
from .runs import Run, bench_order, in_average
from .stats import absolute_data, absolute_measures, pair_data, pairwise_scores
from .table import AVERAGE, bench_title


@dataclass
class Difference:
    bench: str
    measure: str  # MEASURES key or a pairwise benchmark's section / metrics.LEADERBOARD
    value_a: float
    value_b: float
    difference: bootstrap.Estimate  # A minus B, with CI and p-value for "no difference"
    n: int  # samples (pairs) both judges scored
    only_a: int = 0  # scored by A only (left out of the comparison)
    only_b: int = 0

    def to_dict(self) -> dict:
        return {"bench": self.bench, "measure": self.measure, "a": self.value_a, "b": self.value_b,
                "difference": self.difference.to_dict(), "n": self.n, "only_a": self.only_a, "only_b": self.only_b}


def _by_bench(runs: list[Run], side: str) -> dict[str, Run]:
    judges = {r.judge for r in runs}
    if len(judges) != 1:
        raise ConfigError(f"compare side {side} holds runs of {len(judges)} judges ({', '.join(sorted(judges))}); "
                         "pass one judge folder per side")
    return {r.bench: r for r in runs}


def compare(runs_a: list[Run], runs_b: list[Run], measures: list[str],
            resamples: int = bootstrap.DEFAULT_RESAMPLES, seed: int = 0,
            confidence: float = bootstrap.DEFAULT_CONFIDENCE) -> list[Difference]:
    a, b = _by_bench(runs_a, "A"), _by_bench(runs_b, "B")
    shared = bench_order(set(a) & set(b))
    if not shared:
        raise ConfigError(f"the two judges share no benchmark (A: {sorted(a)}, B: {sorted(b)})")
    out: list[Difference] = []
    average_parts: list[tuple[list[float], list[float], np.ndarray]] = []
    for bench in shared:
        run_a, run_b = a[bench], b[bench]
        if run_a.pairwise:
            out.extend(_compare_pairs(bench, run_a, run_b, resamples, seed, confidence))
            continue
        data_a, data_b = absolute_data(run_a), absolute_data(run_b)
        keys = sorted(set(data_a.keys) & set(data_b.keys))
        if not keys:
            raise ConfigError(f"{bench}: the two runs share no scored sample ids ({run_a.path}, {run_b.path})")
        pa, pb = data_a.subset(keys), data_b.subset(keys)
        gold_a, gold_b = pa.gold, pb.gold
        if not np.allclose(gold_a, gold_b):
            raise ConfigError(f"{bench}: gold labels differ between {run_a.path} and {run_b.path} for the same ids")
        values_a = absolute_measures(measures, gold_a, pa.prediction)
        values_b = absolute_measures(measures, gold_b, pb.prediction)
        reps = bootstrap.replicates(
            [np.arange(len(keys))],
            lambda idx: np.subtract(absolute_measures(measures, gold_a[idx], pa.prediction[idx]),
                                    absolute_measures(measures, gold_b[idx], pb.prediction[idx])),
            resamples, bootstrap.stream_seed(seed, bench, "paired"))
        for i, m in enumerate(measures):
            out.append(Difference(bench, m, values_a[i], values_b[i],
                                  bootstrap.estimate(values_a[i] - values_b[i], reps[:, i], confidence, null=0.0),
                                  len(keys), data_a.n - len(keys), data_b.n - len(keys)))
        if in_average(bench):
            average_parts.append((values_a, values_b, reps))
    if len(average_parts) > 1:
        for i, m in enumerate(measures):
            value_a = float(np.mean([p[0][i] for p in average_parts]))
            value_b = float(np.mean([p[1][i] for p in average_parts]))
            reps = np.mean([p[2][:, i] for p in average_parts], axis=0)
            out.append(Difference(AVERAGE, m, value_a, value_b,
                                  bootstrap.estimate(value_a - value_b, reps, confidence, null=0.0),
                                  sum(d.n for d in out if d.measure == m and in_average(d.bench))))
    return out


def _compare_pairs(bench, run_a, run_b, resamples, seed, confidence) -> list[Difference]:
    if run_a.unparsed_pairs != run_b.unparsed_pairs:  # the two scores would follow different rules
        raise ConfigError(f"{bench}: {run_a.path} scored unparsed pairs {run_a.unparsed_pairs!r} but {run_b.path} "
                          f"{run_b.unparsed_pairs!r}; rerun one with --unparsed-pairs to compare them")
    data_a, data_b = pair_data(run_a), pair_data(run_b)
    keys = sorted(set(data_a.keys) & set(data_b.keys))
    if not keys:
        raise ConfigError(f"{bench}: the two runs share no scored pairs ({run_a.path}, {run_b.path})")
    pa, pb = data_a.subset(keys), data_b.subset(keys)
    scores_a = pairwise_scores(pa.subsets, pa.outcomes, pa.scheme)
    scores_b = pairwise_scores(pb.subsets, pb.outcomes, pb.scheme)
    names = list(scores_a)

    def difference(idx):
        sa = pairwise_scores(pa.subsets[idx], pa.outcomes[idx], pa.scheme)
        sb = pairwise_scores(pb.subsets[idx], pb.outcomes[idx], pb.scheme)
        return [sa[n] - sb[n] for n in names]

    reps = bootstrap.replicates(pa.strata(), difference, resamples, bootstrap.stream_seed(seed, bench, "paired"))
    return [Difference(bench, n, scores_a[n], scores_b[n],
                       bootstrap.estimate(scores_a[n] - scores_b[n], reps[:, i], confidence, null=0.0),
                       len(keys), data_a.n - len(keys), data_b.n - len(keys))
            for i, n in enumerate(names)]


def unshared_benches(runs_a: list[Run], runs_b: list[Run]) -> list[str]:
    """Benchmarks only one side ran (left out of the comparison, and said so)."""
    return bench_order({r.bench for r in runs_a} ^ {r.bench for r in runs_b})


def to_markdown(diffs: list[Difference], label_a: str, label_b: str, confidence: float, resamples: int,
                seed: int, unshared: list[str] = ()) -> str:
    from tabulate import tabulate

    from .stats import MEASURES

    rows = []
    for d in diffs:
        accuracy = d.measure not in MEASURES
        scale = 100.0 if accuracy else 1.0
        fmt = "{:.1f}" if accuracy else "{:.3f}"
        est = d.difference
        interval = f"[{fmt.format(scale * est.low)}, {fmt.format(scale * est.high)}]" if est.low is not None else "–"
        rows.append([bench_title(d.bench), MEASURES[d.measure].markdown if not accuracy else d.measure + " (%)",
                     fmt.format(scale * d.value_a), fmt.format(scale * d.value_b), fmt.format(scale * est.value),
                     interval, f"{est.p_value:.3f}" if est.p_value is not None else "–",
                     d.n, f"{d.only_a}/{d.only_b}"])
    headers = ["Benchmark", "Metric", f"A: {label_a}", f"B: {label_b}", "A − B", f"{confidence:.0%} CI", "p",
               "n paired", "only A/B"]
    note = (f"Paired bootstrap over the samples both judges scored ({resamples} resamples, seed {seed}); "
            "p is the two-sided bootstrap p-value for no difference. Pairwise benchmarks resample pairs within "
            "sections (a subset holding half its section's weight apart, e.g. RewardBench's math-prm); the "
            "Average resamples each benchmark independently.")
    if not any(d.bench == AVERAGE for d in diffs):
        note += " No Average: fewer than two absolute benchmarks are shared."
    if unshared:
        note += f" Not compared (run by one judge only): {', '.join(bench_title(b) for b in unshared)}."
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n\n" + note + "\n"
