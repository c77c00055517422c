"""Find and read the runs written by ``tract-eval run``: ``OUT/<judge>/<bench>/predictions.jsonl``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..benchmarks.base import find_card_or_none
from ..errors import InputNotFoundError, UserError
from ..metrics import UNPARSED_PAIR_POLICIES, SectionScheme
from ..records import MANIFEST, METRICS, PREDICTIONS, SHARDS, CorruptPredictions
from ..records import read_predictions as read_rows


class RunFormatError(UserError, ValueError):
    """A run folder or one of its files does not have the shape ``tract-eval run`` writes."""


@dataclass
class Run:
    judge: str
    bench: str
    path: Path
    rows: list[dict]
    metrics: dict = field(default_factory=dict)  # metrics.json as written by the run (may be absent)
    manifest: dict = field(default_factory=dict)

    @property
    def pairwise(self) -> bool:
        """RewardBench-style runs score chosen/rejected sides; accuracy replaces correlations.
        The run's manifest says so (as its benchmark card did), else the card of that name; runs of neither
        are told by their rows."""
        kind = (self.manifest.get("bench") or {}).get("kind")
        if kind is not None:
            return kind == "pairwise"
        card = find_card_or_none(self.bench)
        if card is not None:
            return card.kind == "pairwise"
        return any(isinstance(r.get("meta"), dict) and "side" in r["meta"] for r in self.rows[:1])

    @property
    def unparsed_pairs(self) -> str:
        """Pairwise: how the run scored a pair with an unscored side (``--unparsed-pairs``), as its manifest's
        benchmark options record it (metrics.json says the same); runs that record neither used the default."""
        options = (self.manifest.get("bench") or {}).get("options") or {}
        rule = options.get("unparsed_pairs", self.metrics.get("unparsed_pairs", "half"))
        if rule not in UNPARSED_PAIR_POLICIES:
            raise RunFormatError(f"{self.path}: unparsed_pairs {rule!r} is none of {', '.join(UNPARSED_PAIR_POLICIES)}")
        return rule

    def section_scheme(self) -> SectionScheme:
        """Pairwise: the sections (in report order) and subset weights the run was scored with, as its
        manifest records them; runs from before manifests did, by the card of their benchmark's name."""
        described = self.manifest.get("bench") or {}
        if "sections" in described and "subset_weights" in described:
            return SectionScheme.from_dict(described)
        card = find_card_or_none(self.bench)
        if card is None or not card.subset_weights:
            raise RunFormatError(f"{self.path}: its {MANIFEST} records no benchmark sections and no card named "
                                 f"{self.bench!r} weights its subsets (pass --cards DIR with that card)")
        return card.section_scheme()


_REQUIRED = {"id": str, "prediction": (int, float, type(None)), "gold": (int, float, type(None))}


def read_predictions(path: Path) -> list[dict]:
    """Rows of a predictions file (a torn last line of a run in progress is left out, never repaired here);
    a malformed row fails naming the file, row and field."""
    try:
        rows = read_rows(path)
    except CorruptPredictions as exc:
        raise RunFormatError(str(exc)) from exc
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise RunFormatError(f"{path}: row {number} is not a JSON object")
        for name, kinds in _REQUIRED.items():
            if name not in row:
                raise RunFormatError(f"{path}: row {number} has no field {name!r}")
            if not isinstance(row[name], kinds) or isinstance(row[name], bool):
                raise RunFormatError(f"{path}: row {number} field {name!r} has type {type(row[name]).__name__}")
        key = sample_key(row)
        if key in seen:
            raise RunFormatError(f"{path}: row {number} repeats sample {key!r} (first in row {seen[key]})")
        seen[key] = number
    return rows


def sample_key(row: dict) -> str:
    """Rows are keyed on (subset, id) where a subset is given: RewardBench ids repeat across subsets."""
    meta = row.get("meta") or {}
    subset = meta.get("subset")
    side = meta.get("side")
    parts = [str(p) for p in (subset, row["id"], side) if p is not None]
    return "/".join(parts)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{path}: not valid JSON: {exc}") from exc


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
        metrics=_read_json(folder / METRICS),
        manifest=_read_json(folder / MANIFEST),
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
