"""Benchmarks: cards in ``benchmarks/*.yaml``, rows from local files, upstream URLs or the hub."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import absolute_metrics, pairwise_metrics
from .base import (
    BenchmarkCard,
    DataFormatError,
    DataUnavailable,
    LocatedData,
    Sample,
    builtin_benchmark_names,
    load_card,
    locate_data,
)
from .loaders import LOADERS


@dataclass
class Benchmark:
    card: BenchmarkCard
    samples: list[Sample]
    located: LocatedData
    options: dict = field(default_factory=dict)

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

    def metrics(self, rows: list[dict]) -> dict:
        return pairwise_metrics(rows) if self.kind == "pairwise" else absolute_metrics(rows)

    def describe(self) -> dict:
        return {"name": self.name, "title": self.card.title, "kind": self.kind, "samples": len(self.samples),
                "options": self.options, **self.located.describe()}


def load_benchmark(name: str, data_dir: str | Path | None = None, **options) -> Benchmark:
    card = load_card(name)
    located = locate_data(card, Path(data_dir) if data_dir else None)
    samples = LOADERS.get(card.loader)(card, located, options)
    if not samples:
        raise DataFormatError(located.source, None, None, f"{card.title}: no rows")
    return Benchmark(card, samples, located, options)


__all__ = [
    "Benchmark", "BenchmarkCard", "DataFormatError", "DataUnavailable", "Sample",
    "builtin_benchmark_names", "load_benchmark",
]
