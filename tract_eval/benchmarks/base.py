"""Benchmark cards, samples and the data-location rules shared by every benchmark."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..cards import card_dir
from ..hub import hub_reachable, url_reachable
from ..prompts import GradingFields

log = logging.getLogger(__name__)

DATA_DIR_ENV = "TRACT_EVAL_DATA_DIR"
CACHE_DIR = Path(os.environ.get("TRACT_EVAL_CACHE", Path.home() / ".cache" / "tract-eval"))


class DataUnavailable(RuntimeError):
    """The benchmark's data is neither local nor reachable; ``--bench all`` skips it with this reason."""


class DataFormatError(ValueError):
    """A row is malformed; the message names file, row and field."""

    def __init__(self, source: str, row: int | None, field_name: str | None, problem: str):
        where = source + (f": row {row}" if row is not None else "") + (f": field {field_name!r}" if field_name else "")
        super().__init__(f"{where}: {problem}")


@dataclass
class Sample:
    id: str
    fields: GradingFields
    gold: float | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkCard:
    name: str
    title: str
    kind: str  # "absolute" or "pairwise"
    loader: str  # registry key of the loader
    files: list[str] = field(default_factory=list)  # relative to the data dir
    hub_id: str | None = None
    hub_split: str | None = None
    urls: list[str] = field(default_factory=list)  # upstream copies, one per file
    git_blobs: list[str] = field(default_factory=list)  # known-good git blob ids (any file/version)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "BenchmarkCard":
        data = yaml.safe_load(path.read_text()) or {}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def git_blob_id(data: bytes) -> str:
    """What ``git hash-object`` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class LocatedData:
    """Where a benchmark's rows came from, and whether they matched a known checksum."""

    source: str
    paths: list[Path] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)  # file -> "verified" | "unknown <blob>"
    hub_rows: list[dict] | None = None

    def describe(self) -> dict:
        return {"source": self.source, "checksums": self.checksums}


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def locate_data(card: BenchmarkCard, data_dir: Path | None) -> LocatedData:
    """``data_dir`` (or $TRACT_EVAL_DATA_DIR) first, then the upstream URLs, then the hub."""
    data_dir = data_dir or default_data_dir()
    if data_dir and card.files and all((data_dir / f).is_file() for f in card.files):
        paths = [data_dir / f for f in card.files]
        return LocatedData(str(data_dir), paths, _verify(card, paths))
    looked = f"{data_dir}/{{{', '.join(card.files)}}}" if data_dir else f"no --data-dir or ${DATA_DIR_ENV}"
    if card.urls:
        cached = [CACHE_DIR / card.name / Path(f).name for f in card.files]
        if all(p.is_file() for p in cached):
            return LocatedData("cache:" + str(cached[0].parent), cached, _verify(card, cached))
        if url_reachable(card.urls[0]):
            for url, target in zip(card.urls, cached):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".part")
                urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URLs from the card
                tmp.replace(target)
            return LocatedData(card.urls[0], cached, _verify(card, cached))
    if card.hub_id:
        if not hub_reachable():
            raise DataUnavailable(
                f"{card.title}: not found locally ({looked}) and the Hugging Face hub is unreachable "
                f"(hub dataset {card.hub_id}); pass --data-dir with {', '.join(card.files) or 'the files'}"
            )
        import datasets

        rows = [dict(r) for r in datasets.load_dataset(card.hub_id, split=card.hub_split or "train")]
        return LocatedData(f"hub:{card.hub_id}:{card.hub_split}", hub_rows=rows)
    raise DataUnavailable(f"{card.title}: not found locally ({looked}) and its upstream is unreachable")


def _verify(card: BenchmarkCard, paths: list[Path]) -> dict[str, str]:
    result = {}
    for path in paths:
        blob = git_blob_id(path.read_bytes())
        if not card.git_blobs:
            result[path.name] = f"no known checksum ({blob})"
        elif blob in card.git_blobs:
            result[path.name] = "verified"
        else:
            log.warning("%s: git blob %s matches none of the known versions %s", path, blob, card.git_blobs)
            result[path.name] = f"UNKNOWN VERSION ({blob})"
    return result


def read_text_utf8(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are an error naming the file, line and byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(str(path), None, None,
                              f"not UTF-8 at byte {exc.start} (line {line}): {exc.reason} "
                              f"({data[exc.start:exc.start + 4]!r}); re-save the file as UTF-8") from None


def read_json_rows(path: Path) -> list[dict]:
    """A JSON array, or JSON Lines (some upstream .json files are JSONL)."""
    text = read_text_utf8(path)
    stripped = text.lstrip()
    if stripped.startswith("version https://git-lfs"):
        raise DataFormatError(str(path), None, None, "is a Git LFS pointer, not the data: fetch the real file")
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(str(path), None, None, f"invalid JSON: {exc}") from exc
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFormatError(str(path), number, None, f"invalid JSON line: {exc}") from exc
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFormatError(str(path), number, None, "row is not a JSON object")
    return rows


def load_card(name: str) -> BenchmarkCard:
    path = card_dir("benchmarks") / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(builtin_benchmark_names())
        raise KeyError(f"unknown benchmark {name!r}; known: {known}")
    return BenchmarkCard.load(path)


def builtin_benchmark_names() -> list[str]:
    return sorted(p.stem for p in card_dir("benchmarks").glob("*.yaml"))
