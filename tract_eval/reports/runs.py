"""Find and read the runs written by ``tract-eval run``: ``OUT/<judge>/<bench>/predictions.jsonl``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..benchmarks.base import find_card_or_none
from ..errors import InputNotFoundError, UserError
from ..metrics import UNPARSED_PAIR_POLICIES, SectionScheme
from ..records import (MANIFEST, METRICS, PREDICTIONS, SHARDS, Manifest, Metrics, Prediction, RunFormatError,
                       identity_differences, read_manifest, read_metrics)
from ..records import read_predictions as read_rows

__all__ = ["Run", "RunFormatError", "load_run", "collect_runs", "read_predictions"]


@dataclass
class Run:
    """A stored run read back: its rows as :class:`Prediction` objects, its metrics and manifest typed."""

    judge: str
    bench: str
    path: Path
    rows: list[Prediction]
    metrics: Metrics = field(default_factory=Metrics)  # metrics.json as written by the run (may be absent)
    manifest: Manifest = field(default_factory=Manifest)

    @property
    def pairwise(self) -> bool:
        """RewardBench-style runs score chosen/rejected sides; accuracy replaces correlations.
        The run's manifest says so (as its benchmark card did), else the card of that name; runs of neither
        are told by their rows."""
        kind = self.manifest.bench_kind
        if kind is not None:
            return kind == "pairwise"
        card = find_card_or_none(self.bench)
        if card is not None:
            return card.kind == "pairwise"
        return any(r.pair is not None for r in self.rows[:1])

    @property
    def unparsed_pairs(self) -> str:
        """Pairwise: how the run scored a pair with an unscored side (``--unparsed-pairs``), as its manifest's
        benchmark options record it (metrics.json says the same); runs that record neither used the default."""
        rule = self.manifest.bench_options.get("unparsed_pairs", self.metrics.raw.get("unparsed_pairs", "half"))
        if rule not in UNPARSED_PAIR_POLICIES:
            raise RunFormatError(f"{self.path}: unparsed_pairs {rule!r} is none of {', '.join(UNPARSED_PAIR_POLICIES)}")
        return rule

    def section_scheme(self) -> SectionScheme:
        """Pairwise: the sections (in report order) and subset weights the run was scored with, as its
        manifest records them; runs from before manifests did, by the card of their benchmark's name."""
        described = self.manifest.bench
        if "sections" in described and "subset_weights" in described:
            return SectionScheme.from_dict(described)
        card = find_card_or_none(self.bench)
        if card is None or not card.subset_weights:
            raise RunFormatError(f"{self.path}: its {MANIFEST} records no benchmark sections and no card named "
                                 f"{self.bench!r} weights its subsets (pass --cards DIR with that card)")
        return card.section_scheme()


def read_predictions(path: Path) -> list[Prediction]:
    """Rows of a predictions file (a torn last line of a run in progress is left out, never repaired here);
    a malformed row, or a sample written twice, fails naming the file and line (as in ``run``)."""
    return read_rows(path)


def load_run(folder: Path) -> Run:
    folder = Path(folder)
    predictions = folder / PREDICTIONS
    if not predictions.is_file():
        raise RunFormatError(f"{folder}: no {PREDICTIONS}")
    rows = read_predictions(predictions)
    if not rows:
        raise RunFormatError(f"{predictions}: holds no predictions")
    # the folder names are what the user sees on disk and passes around, so they label the table
    return Run(
        judge=folder.parent.name,
        bench=folder.name,
        path=folder,
        rows=rows,
        metrics=read_metrics(folder / METRICS) or Metrics(),
        manifest=read_manifest(folder / MANIFEST) or Manifest(),
    )


def collect_runs(roots: list[str | Path]) -> list[Run]:
    """Every run under the given folders: an OUT folder, a judge folder or a single run folder.

    Two runs of the same judge and benchmark (e.g. from two OUT folders) are an error:
    a table cell must come from one run.
    """
    runs: list[Run] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise InputNotFoundError(f"{root}: no such run folder")
        # shard folders (OUT/<judge>/<bench>/shards/i-of-n) are parts of a run, not runs: `merge` combines them
        folders = sorted({p.parent for p in root.rglob(PREDICTIONS)
                          if SHARDS not in p.parent.relative_to(root).parts})
        if not folders:
            raise RunFormatError(f"{root}: holds no {PREDICTIONS} (expected OUT/<judge>/<bench>/{PREDICTIONS})")
        runs.extend(load_run(folder) for folder in folders)
    seen: dict[tuple[str, str], Path] = {}
    for run in runs:
        key = (run.judge, run.bench)
        if key in seen:
            raise RunFormatError(
                f"judge {run.judge!r} on {run.bench!r} appears twice: {seen[key]} and {run.path}; "
                "pass one of them")
        seen[key] = run.path
    return runs


class MixedBenchmarks(UserError, ValueError):
    """Runs of one benchmark name were judged on different data or benchmark options."""


def bench_identity_of(run: Run) -> dict | None:
    """The benchmark part of the run's identity (loader, scale, options, data checksums), as its manifest
    records it; None for runs written before manifests held identities."""
    bench = run.manifest.identity.get("bench")
    return bench if isinstance(bench, dict) else None


def benchmark_differences(runs: list[Run]) -> list[str]:
    """For each benchmark name, how the runs' benchmark identities differ from the first run's (one line
    each, naming both folders and the differing settings): rows of different data must not share a
    column or be paired by id."""
    found = []
    first: dict[str, Run] = {}
    for run in runs:
        ours = bench_identity_of(run)
        if ours is None:
            continue
        reference = first.setdefault(run.bench, run)
        if reference is run:
            continue
        changes = identity_differences(bench_identity_of(reference), ours, "bench")
        if changes:
            found.append(f"{run.bench}: {reference.path} and {run.path} were judged on different benchmarks: "
                         + "; ".join(changes))
    return found


def check_same_benchmarks(runs: list[Run], allow: bool = False, flag: str = "--allow-different-data") -> list[str]:
    """Refuse runs of one benchmark name judged on different data or options, naming the difference; with
    ``allow`` return the differences instead, for the caller to print loudly."""
    found = benchmark_differences(runs)
    if found and not allow:
        raise MixedBenchmarks(found[0] + f" (pass {flag} to put them side by side anyway)")
    return found


def bench_order(benches) -> list[str]:
    """By the cards' ``order`` (the paper's Table 2 for the built-in ones), then by name."""
    def key(bench: str):
        card = find_card_or_none(bench)
        order = card.order if card is not None else None
        return (order is None, order or 0, bench)

    return sorted(set(benches), key=key)


def in_average(bench: str) -> bool:
    """Whether the reports' Average runs over this benchmark (its card's ``average``)."""
    card = find_card_or_none(bench)
    return bool(card and card.average)
