"""Benchmarks: cards in ``benchmarks/*.yaml``, rows from local files, upstream URLs or the hub."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..cards import card_dir
from ..errors import ConfigError
from ..metrics import absolute_metrics, first_run_accuracy, pairwise_metrics
from ..records import Prediction
from .base import (
    BenchmarkCard,
    DataFormatError,
    DataUnavailable,
    LoaderOptions,
    LocatedData,
    Sample,
    benchmark_names,
    builtin_benchmark_names,
    find_card_or_none,
    load_card,
    locate_data,
    options_off_default,
    parse_scale,
)
from .loaders import LOADERS
from .own_data import TABLE_LOADER, data_card, is_data_spec, load_table, parse_columns

LOADERS.register(TABLE_LOADER)(load_table)
PAIR_META = {"subset", "section", "pair_id", "side"}  # what pairwise metrics and reports read from a sample


@dataclass
class Benchmark:
    card: BenchmarkCard
    samples: list[Sample]
    located: LocatedData
    options: dict = field(default_factory=dict)
    # what load_benchmark was given, so that a run's manifest can load the same benchmark again (``merge``)
    spec: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def kind(self) -> str:
        return self.card.kind

    def select(self, limit: int | None = None) -> list[Sample]:
        """The first ``limit`` items: rows for absolute benchmarks, pairs (both sides) for pairwise ones."""
        if limit is None:
            return list(self.samples)
        return self.samples[: limit * 2] if self.kind == "pairwise" else self.samples[:limit]

    @property
    def has_gold(self) -> bool:
        return self.kind == "pairwise" or any(s.gold is not None for s in self.samples)

    def section_scheme(self):
        """Pairwise: how subset accuracies roll up into sections and the leaderboard score (from the card;
        weights default to the pairs each subset has in the loaded data)."""
        found = {s.meta["subset"]: s.meta["section"] for s in self.samples}
        pairs = Counter(s.meta["subset"] for s in self.samples if s.meta.get("side") == "chosen")
        return self.card.section_scheme(found, pairs)

    def metrics(self, rows: list[Prediction]) -> dict:
        if self.kind == "pairwise":
            return pairwise_metrics(rows, self.section_scheme(), self.options.get("unparsed_pairs", "half"))
        if not self.has_gold:  # own data without a score column: predictions only
            scored = [r.prediction for r in rows if r.prediction is not None]
            return {"n": 0, "n_total": len(rows), "predicted": len(scored),
                    "mean_prediction": sum(scored) / len(scored) if scored else None,
                    "parse_failures": sum(r.failed for r in rows),
                    "note": "no gold scores: predictions only"}
        metrics = absolute_metrics(rows)
        if self.card.options.get("first_run_accuracy"):
            accuracy = first_run_accuracy(rows)
            if accuracy is not None:
                metrics["first_run_accuracy"] = accuracy
        return metrics

    def describe(self) -> dict:
        # pairwise: the sections and weights the metrics used, so reports need no card to read the run
        scheme = self.section_scheme().to_dict() if self.kind == "pairwise" else {}
        return {"name": self.name, **self.card.describe(), **scheme, "samples": len(self.samples),
                "options": self.options, "load": self.spec, **self.located.describe()}


def load_benchmark(name: str, data_dir: str | Path | None = None, *, columns: str | dict | None = None,
                   scale=None, **options) -> Benchmark:
    """A benchmark by card name or card file (``.yaml``), or your own data (a .jsonl/.json/.csv/.parquet path
    or ``hf:ORG/NAME[:SPLIT]``, with ``columns`` mapping roles to column names and ``scale`` as ``"1-10"``)."""
    if is_data_spec(name):
        card = data_card(name, columns, scale)
        spec = {"bench": card.files[0] if card.files else name, "columns": parse_columns(columns),
                "scale": list(card.scale)}
    else:
        if columns or scale is not None:
            raise ConfigError(f"--columns and --scale apply to your own data files, not to the benchmark {name!r} "
                              "(its card says what its columns and scale are)")
        card = load_card(name)
        # a card outside the built-in folder (--cards DIR, a card file) is found again by its path
        builtin = card.path is not None and card.path.parent == card_dir("benchmarks")
        spec = {"bench": card.name if builtin else f"{card.path.resolve()}" + (f"@{card.version}" if card.version else "")}
    located = locate_data(card, Path(data_dir) if data_dir else None)
    samples = LOADERS.get(card.loader)(card, located, options)
    if not samples:
        raise DataFormatError(located.source, None, None, f"{card.title}: no rows")
    bench = Benchmark(card, samples, located, options, spec)
    if card.kind == "pairwise":
        lacking = next((s for s in samples if not PAIR_META <= set(s.meta)), None)
        if lacking is not None:
            raise ConfigError(f"{card.path or card.name}: a pairwise benchmark's loader gives every sample the "
                              f"meta {', '.join(sorted(PAIR_META))}; loader {card.loader!r} gave "
                              f"{sorted(lacking.meta)} for {lacking.id}")
        bench.section_scheme()  # every subset weighted: checked before any model loads
    return bench


def reload_benchmark(described: dict, data_dir: str | Path | None = None) -> Benchmark:
    """The benchmark a run's manifest describes (its ``bench`` entry): the same card or data file, columns,
    scale and options. Manifests from before they recorded it name a benchmark card by the run's name."""
    spec = described.get("load") or {"bench": described["name"]}
    return load_benchmark(spec["bench"], data_dir, columns=spec.get("columns") or None, scale=spec.get("scale"),
                          **described.get("options", {}))


__all__ = [
    "Benchmark", "BenchmarkCard", "DataFormatError", "DataUnavailable", "LoaderOptions", "Sample", "benchmark_names",
    "builtin_benchmark_names", "find_card_or_none", "is_data_spec", "load_benchmark", "load_card", "parse_scale",
    "options_off_default", "reload_benchmark",
]
