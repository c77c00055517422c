"""The paper's Table 2: one row per judge, benchmark x metric columns, an Average over the absolute
benchmarks and RewardBench accuracy in its own columns; best bold, second underlined."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from . import bootstrap
from ..benchmarks.base import find_card_or_none
from .runs import Run, bench_order, in_average
from ..metrics import LEADERBOARD
from .stats import MEASURES, absolute_data, absolute_measures, pair_data, pairwise_scores

AVERAGE = "Average"


def bench_title(bench: str) -> str:
    """The benchmark card's title (runs of own data without a card keep their folder name)."""
    card = find_card_or_none(bench) if bench != AVERAGE else None
    return card.title if card is not None else bench


def run_model(run: Run) -> str:
    """The model a stored run used, as its manifest records it ("unknown" for runs without one); a credential
    in it (a URL's user:password) is shown as ***."""
    from ..redaction import redact_text

    backend = run.manifest.backend
    identity = run.manifest.identity.get("model") or {}
    judge = run.manifest.judge
    return redact_text(str(backend.get("model") or identity.get("model") or identity.get("served_model")
                           or judge.get("model") or "unknown"))


@dataclass(frozen=True)
class Column:
    group: str  # benchmark, "Average" or a pairwise benchmark
    measure: str  # a MEASURES key, or a pairwise benchmark's section / LEADERBOARD
    accuracy: bool = False  # shown as a percentage

    @property
    def higher_is_better(self) -> bool:
        return self.accuracy or MEASURES[self.measure].higher_is_better

    def label(self, style: str) -> str:
        if self.accuracy:
            return self.measure
        return MEASURES[self.measure].latex if style == "latex" else MEASURES[self.measure].markdown

    def format(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "–"
        return f"{100 * value:.1f}" if self.accuracy else f"{value:.3f}"


@dataclass
class Cell:
    estimate: bootstrap.Estimate | None = None
    rank: int = 0  # 1 best, 2 second best, 0 otherwise
    partial: bool = False  # an Average over fewer benchmarks than the column's

    def text(self, column: Column) -> str:
        return column.format(self.estimate.value if self.estimate else None)

    def interval(self, column: Column) -> str:
        if not self.estimate or self.estimate.low is None:
            return ""
        return f"[{column.format(self.estimate.low)}, {column.format(self.estimate.high)}]"


@dataclass
class Counts:
    used: int  # samples (pairs for RewardBench) entering the metric
    total: int
    parse_failures: int
    pairwise: bool = False


@dataclass
class Table:
    judges: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]
    counts: dict[tuple[str, str], Counts]
    benches: list[str]  # benchmark order of the columns
    averaged: list[str]  # absolute benchmarks in the Average
    partial_averages: dict[str, list[str]] = field(default_factory=dict)  # judge -> its own averaged benches
    confidence: float | None = None
    resamples: int = 0
    seed: int | None = None
    models: dict[tuple[str, str], str] = field(default_factory=dict)  # (judge, bench) -> the model that ran
    model_notes: dict[tuple[str, str], str] = field(default_factory=dict)  # e.g. the card's model was replaced

    def judge_models(self, judge: str) -> str:
        """The model(s) a judge ran on across its benchmarks, with any fallback notes."""
        models = sorted({m for (j, _), m in self.models.items() if j == judge})
        notes = sorted({n for (j, _), n in self.model_notes.items() if j == judge})
        return ", ".join(models) + "".join(f" (NOTE: {n})" for n in notes)

    def groups(self) -> list[tuple[str, list[Column]]]:
        out: list[tuple[str, list[Column]]] = []
        for column in self.columns:
            if not out or out[-1][0] != column.group:
                out.append((column.group, []))
            out[-1][1].append(column)
        return out


def build_table(runs: list[Run], measures: list[str], ci: bool = False,
                resamples: int = bootstrap.DEFAULT_RESAMPLES, seed: int = 0,
                confidence: float = bootstrap.DEFAULT_CONFIDENCE) -> Table:
    if not runs:
        raise ConfigError("no runs to report")
    judges = sorted({r.judge for r in runs})
    benches = bench_order(r.bench for r in runs)
    by_key = {(r.judge, r.bench): r for r in runs}
    absolute = [b for b in benches if not any(r.pairwise for r in runs if r.bench == b)]
    pairwise = [b for b in benches if b not in absolute]
    averaged = [b for b in absolute if in_average(b)]
    columns: list[Column] = [Column(b, m) for b in absolute for m in measures]
    if averaged:
        columns += [Column(AVERAGE, m) for m in measures]
    table = Table(judges, columns, {}, {}, benches, averaged, confidence=confidence if ci else None,
                  resamples=resamples if ci else 0, seed=seed if ci else None)
    for run in runs:
        table.models[run.judge, run.bench] = run_model(run)
        if run.manifest.model_note:
            table.model_notes[run.judge, run.bench] = run.manifest.model_note
    section_order: dict[str, list[str]] = {}  # pairwise benchmark -> its sections, then LEADERBOARD
    for judge in judges:
        measured = {bench: _absolute_cells(table, judge, by_key[judge, bench], measures)
                    for bench in absolute if (judge, bench) in by_key}
        _average_cells(table, judge, measures, measured)
        for bench in pairwise:
            if (judge, bench) in by_key:
                section_order[bench] = _pairwise_cells(table, judge, by_key[judge, bench])
    # pairwise columns after the correlation columns, each benchmark's in its card's section order
    table.columns = [c for c in table.columns if not c.accuracy] + sorted(
        (c for c in table.columns if c.accuracy),
        key=lambda c: (benches.index(c.group), section_order[c.group].index(c.measure)))
    _rank(table)
    return table


def _estimate(table: Table, value: float, replicates: np.ndarray | None) -> bootstrap.Estimate:
    """The value, with its percentile interval when the table is bootstrapped."""
    if replicates is None:
        return bootstrap.Estimate(value)
    return bootstrap.estimate(value, replicates, table.confidence)


def _absolute_cells(table: Table, judge: str, run: Run, measures: list[str]
                    ) -> tuple[list[float], np.ndarray | None]:
    """One absolute benchmark's cells of a judge; returns its values and bootstrap replicates (the Average's)."""
    bench = run.bench
    data = absolute_data(run)
    table.counts[judge, bench] = Counts(data.n, data.n_total, data.parse_failures)
    values = absolute_measures(measures, data.gold, data.prediction)
    reps = None
    if table.resamples and data.n:
        reps = bootstrap.replicates(
            [np.arange(data.n)], lambda idx: absolute_measures(measures, data.gold[idx], data.prediction[idx]),
            table.resamples, bootstrap.stream_seed(table.seed, bench))
    for i, m in enumerate(measures):
        table.cells[judge, Column(bench, m)] = Cell(_estimate(table, values[i], None if reps is None else reps[:, i]))
    return values, reps


def _average_cells(table: Table, judge: str, measures: list[str],
                   measured: dict[str, tuple[list[float], np.ndarray | None]]) -> None:
    """A judge's Average over the averaged benchmarks it ran (a partial Average is marked)."""
    present = [b for b in table.averaged if b in measured]
    if not present:
        return
    if present != table.averaged:
        table.partial_averages[judge] = present
    for i, m in enumerate(measures):
        value = float(np.mean([measured[b][0][i] for b in present]))
        reps = None
        if all(measured[b][1] is not None for b in present):
            # benchmarks are resampled independently: the Average of replicate b is the mean of theirs
            reps = np.mean([measured[b][1][:, i] for b in present], axis=0)
        table.cells[judge, Column(AVERAGE, m)] = Cell(_estimate(table, value, reps),
                                                      partial=present != table.averaged)


def _pairwise_cells(table: Table, judge: str, run: Run) -> list[str]:
    """A pairwise benchmark's accuracy cells of a judge (adding its columns); returns its section order."""
    bench = run.bench
    data = pair_data(run)
    table.counts[judge, bench] = Counts(data.n, data.n_pairs, data.parse_failures, pairwise=True)
    scores = pairwise_scores(data.subsets, data.outcomes, data.scheme)
    names = list(scores)  # the card's sections in its order, then the leaderboard score
    reps = None
    if table.resamples and data.n:
        reps = bootstrap.replicates(
            data.strata(),
            lambda idx: [pairwise_scores(data.subsets[idx], data.outcomes[idx], data.scheme)[s] for s in names],
            table.resamples, bootstrap.stream_seed(table.seed, bench))
    for i, name in enumerate(names):
        column = Column(bench, name, accuracy=True)
        if column not in table.columns:
            table.columns.append(column)
        table.cells[judge, column] = Cell(_estimate(table, scores[name], None if reps is None else reps[:, i]))
    return [*data.scheme.sections, LEADERBOARD]


def _rank(table: Table) -> None:
    """Bold the best and underline the second best value per column, comparing what is displayed.

    Ties share a rank; partial Averages are not comparable and are never marked.
    """
    for column in table.columns:
        ranked = [(table.cells[j, column], table.cells[j, column].text(column)) for j in table.judges
                  if (j, column) in table.cells and not table.cells[j, column].partial]
        if len(ranked) < 2:  # nothing to compare against
            continue
        shown = sorted({float(t) for _, t in ranked if t != "–"}, reverse=column.higher_is_better)
        for cell, text in ranked:
            if text != "–" and shown:
                position = shown.index(float(text))
                cell.rank = position + 1 if position < 2 else 0
