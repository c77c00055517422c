"""Benchmark cards, samples and the data-location rules shared by every benchmark."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cards import card_dir, card_dirs, card_names
from ..judge_config import MAX_SCALE_POINTS, read_yaml_mapping
from ..errors import ConfigError, InputNotFoundError, UnknownNameError, UserError
from ..hub import hub_reachable, url_reachable
from ..prompts import GradingFields

log = logging.getLogger(__name__)

DATA_DIR_ENV = "TRACT_EVAL_DATA_DIR"
CACHE_DIR = Path(os.environ.get("TRACT_EVAL_CACHE", Path.home() / ".cache" / "tract-eval"))


class DataUnavailable(UserError, RuntimeError):
    """The benchmark's data is neither local nor reachable; ``--bench all`` skips it with this reason."""


class DataFormatError(UserError, ValueError):
    """A row is malformed; the message names file, row and field."""

    def __init__(self, source: str, row: int | None, field_name: str | None, problem: str):
        where = source + (f": row {row}" if row is not None else "") + (f": field {field_name!r}" if field_name else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class LoaderOptions:
    """The options loaders read from ``load_benchmark(..., **options)`` besides the card, and their defaults."""

    drop_reference: bool = False  # TRACT's --remove_reference: judges cut the reference answer out


def options_off_default(options: dict[str, Any]) -> dict[str, Any]:
    """The options that change the load: one left at its default (``drop_reference=False``) is the same
    benchmark as one not given, so the run identity leaves it out."""
    defaults = {f.name: f.default for f in dataclasses.fields(LoaderOptions)}
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


@dataclass
class Sample:
    id: str
    fields: GradingFields
    gold: float | None
    meta: dict[str, Any] = field(default_factory=dict)


KINDS = ("absolute", "pairwise")


@dataclass
class BenchmarkCard:
    """What a benchmark is: its card is the only place that says so (reports read titles, order and
    Average membership from here)."""

    name: str
    title: str
    kind: str  # "absolute" (a score per sample vs gold) or "pairwise" (chosen vs rejected)
    loader: str  # registry key of the loader
    files: list[str] = field(default_factory=list)  # absolute, or relative to the data dir, else to the card
    hub_id: str | None = None
    hub_split: str | None = None
    urls: list[str] = field(default_factory=list)  # upstream copies, one per file
    git_blobs: list[str] = field(default_factory=list)  # known-good git blob ids (any file/version)
    scale: tuple[int, int] = (1, 5)  # the judges' score candidates follow it
    average: bool = False  # one of the benchmarks the reports' Average runs over
    order: int | None = None  # position in report tables (None: after the ordered ones, by name)
    # pairwise: each subset's weight in its section (RewardBench: reward-bench's EXAMPLE_COUNTS); the
    # sections themselves, in report order, are ``options.sections`` (subset -> section)
    subset_weights: dict[str, float] = field(default_factory=dict)
    # [feedback field, score field]: rows carry annotators' CoTs and their scores (``analyze cot-shift``)
    annotation_cots: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the card file (None: built from --bench PATH)
    # the data version the card's files/urls/git_blobs describe (the default), and other versions,
    # chosen as ``--bench NAME@VERSION``: each overrides title, urls and git_blobs
    version: str | None = None
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"{self.path or self.name}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        self.scale = parse_scale(self.scale, f"{self.path or self.name}: scale")
        self._check_sections()
        if self.annotation_cots and (len(self.annotation_cots) != 2
                                     or not all(isinstance(f, str) for f in self.annotation_cots)):
            raise ConfigError(f"{self.path or self.name}: annotation_cots names two fields: [feedback, score]")

    def _check_sections(self) -> None:
        where = self.path or self.name
        sections = self.options.get("sections", {})
        if not isinstance(sections, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in sections.items()):
            raise ConfigError(f"{where}: options.sections maps each subset to its section name (subset: section)")
        weights = self.subset_weights
        if not isinstance(weights, dict) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights.values()):
            raise ConfigError(f"{where}: subset_weights maps each subset to a positive number")
        if weights and sections and set(weights) != set(sections):
            raise ConfigError(f"{where}: subset_weights and options.sections name other subsets "
                              f"(weights only: {sorted(set(weights) - set(sections))}; "
                              f"sections only: {sorted(set(sections) - set(weights))})")

    def section_scheme(self, found: dict[str, str] | None = None, pairs: dict[str, int] | None = None):
        """The pairwise roll-up (``metrics.SectionScheme``): the card's sections in their order, then sections
        only the data names (``found``: subset -> section, as loaded); weights from ``subset_weights``, else
        the pairs each subset has in the data (``pairs``)."""
        from ..metrics import SectionScheme

        section_of = dict(self.options.get("sections", {}))
        for subset, section in (found or {}).items():
            section_of.setdefault(subset, section)
        sections: dict[str, list[str]] = {}
        for subset, section in section_of.items():
            sections.setdefault(section, []).append(subset)
        if self.subset_weights:
            unweighted = sorted(set(section_of) - set(self.subset_weights))
            if unweighted:
                raise ConfigError(f"{self.path or self.name}: subset(s) {unweighted} have no subset_weights entry")
            weights = {n: float(self.subset_weights[n]) for n in section_of}
        elif pairs is not None:
            weights = {n: float(pairs.get(n, 0)) for n in section_of}
        else:
            raise ConfigError(f"{self.path or self.name}: no subset_weights, and no data to count pairs in")
        return SectionScheme({name: tuple(subsets) for name, subsets in sections.items()}, weights)

    @classmethod
    def load(cls, path: Path) -> "BenchmarkCard":
        data = read_yaml_mapping(path, "benchmark card")
        data.setdefault("name", path.stem)
        known = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown benchmark card settings {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(**data, path=path)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def describe(self) -> dict:
        return {"title": self.title, "kind": self.kind, "scale": list(self.scale), "average": self.average,
                "order": self.order, "version": self.version}

    def with_version(self, version: str) -> "BenchmarkCard":
        """The card for another data version (``NAME@VERSION``), in its own run folder."""
        if version == self.version:
            return self
        if version not in self.versions:
            known = ", ".join([v for v in [self.version, *self.versions] if v]) or "none"
            raise UnknownNameError(f"benchmark {self.name!r} has no version {version!r}; known: {known}")
        spec = self.versions[version]
        unknown = set(spec) - {"title", "urls", "git_blobs"}
        if unknown:
            raise ConfigError(f"{self.path}: version {version!r}: unknown settings {sorted(unknown)}")
        return dataclasses.replace(self, name=f"{self.name}@{version}", version=version,
                                   title=spec.get("title", f"{self.title} ({version})"),
                                   urls=list(spec.get("urls", [])), git_blobs=list(spec.get("git_blobs", [])))

    def known_versions(self) -> dict[str, list[str]]:
        """Every data version of this benchmark's card file and its git blob ids."""
        base = BenchmarkCard.load(self.path) if self.path is not None else self
        return {base.version or "default": list(base.git_blobs),
                **{v: list(spec.get("git_blobs", [])) for v, spec in base.versions.items()}}


def parse_scale(value, what: str = "--scale") -> tuple[int, int]:
    """``1-10``, ``[1, 10]`` or ``(1, 10)`` as (low, high) integers with low < high, at most
    ``MAX_SCALE_POINTS`` scores."""
    try:
        if isinstance(value, str):
            low, high = (int(v) for v in value.replace(" ", "").split("-"))
        else:
            low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} takes LOW-HIGH integers (e.g. 1-10), not {value!r}") from None
    if low >= high:
        raise ConfigError(f"{what} {value!r}: need LOW < HIGH")
    if high - low + 1 > MAX_SCALE_POINTS:
        raise ConfigError(f"{what} {value!r}: {high - low + 1} scores; a scale has at most {MAX_SCALE_POINTS} "
                          f"(e.g. 0-{MAX_SCALE_POINTS - 1})")
    return low, high


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
    # file -> git blob id of the bytes found when the data was located: part of the run identity
    blobs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.blobs:
            self.blobs = {Path(p).name: git_blob_id(Path(p).read_bytes()) for p in self.paths}

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
    beside = [_beside_card(card, f) for f in card.files]  # own data: absolute paths or next to the card
    if card.files and all(p is not None and p.is_file() for p in beside):
        return LocatedData(str(beside[0].parent), beside, _verify(card, beside))
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
        return LocatedData(f"hub:{card.hub_id}:{card.hub_split}", hub_rows=_hub_rows(card, looked))
    raise DataUnavailable(f"{card.title}: not found locally ({looked}) and its upstream is unreachable")


@contextlib.contextmanager
def _datasets_offline(offline: bool):
    """``datasets`` reads HF_HUB_OFFLINE once, at import; an unreachable hub (or the variable set later) must
    still send it straight to its cache instead of through its network retries."""
    import datasets.config

    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _hub_rows(card: BenchmarkCard, looked: str) -> list[dict]:
    """A hub dataset's rows through ``datasets``: from the hub when it answers; offline (HF_HUB_OFFLINE, or the
    hub unreachable) from the copy an earlier online load left in the datasets cache ($HF_HOME/datasets)."""
    import datasets

    split = card.hub_split or "train"
    offline = not hub_reachable()
    try:
        with _datasets_offline(offline):
            table = datasets.load_dataset(card.hub_id, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, ValueError, FileNotFoundError...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not offline:
            raise DataUnavailable(f"hub dataset {card.hub_id} (split {split!r}): {reason}") from exc
        cache = f"the datasets cache {datasets.config.HF_DATASETS_CACHE} has no copy of split {split!r} ({reason})"
        if not card.files:  # --bench hf:ORG/NAME: there is no local layout to point at
            raise DataUnavailable(f"hub dataset {card.hub_id}: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE "
                                  f"is set) and {cache}; export it to a .jsonl/.csv/.parquet file and pass that") from exc
        raise DataUnavailable(f"{card.title}: not found locally ({looked}), the Hugging Face hub is unreachable and "
                              f"{cache}; pass --data-dir with {', '.join(card.files)}") from exc
    return [dict(row) for row in table]


def _beside_card(card: BenchmarkCard, file: str) -> Path | None:
    path = Path(file).expanduser()
    if path.is_absolute():
        return path
    return card.path.parent / path if card.path else None


def _verify(card: BenchmarkCard, paths: list[Path]) -> dict[str, str]:
    result = {}
    for path in paths:
        blob = git_blob_id(path.read_bytes())
        if not card.git_blobs:
            result[path.name] = f"no known checksum ({blob})"
        elif blob in card.git_blobs:
            result[path.name] = "verified"
        elif other := [v for v, blobs in card.known_versions().items() if blob in blobs]:
            default = next(iter(card.known_versions()))
            base = card.name.split("@")[0]
            suggestion = base if other[0] == default else f"{base}@{other[0]}"
            raise DataFormatError(str(path), None, None,
                                  f"is the {other[0]!r} version of this benchmark (git blob {blob}), not the "
                                  f"{card.version or 'default'!r} one this run asks for; run --bench {suggestion} "
                                  "or supply that version's file")
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


def read_json_rows(path: Path, lines: bool | None = None) -> list[dict]:
    """A JSON array, or JSON Lines (``lines``; None: JSON Lines unless the text opens an array, as some
    upstream .json files are JSONL). Errors name the line (JSON Lines, or where an array stops parsing)
    or the array's row."""
    text = read_text_utf8(path)
    stripped = text.lstrip()
    if stripped.startswith("version https://git-lfs"):
        raise DataFormatError(str(path), None, None, "is a Git LFS pointer, not the data: fetch the real file")
    if not lines and (lines is False or stripped.startswith("[")):
        rows = _parse_json(path, text, None)
        if not isinstance(rows, list):
            raise DataFormatError(str(path), None, None, f"holds {_excerpt(rows)}, not a list of rows")
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataFormatError(str(path), number, None, f"{_excerpt(row)} is not a JSON object of columns")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse_json(path, line, number)
        if not isinstance(row, dict):
            raise DataFormatError(str(path), None, None,
                                  f"line {number}: {_excerpt(row)} is not a JSON object of columns")
        rows.append(row)
    return rows


def _parse_json(path: Path, text: str, line: int | None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {line if line is not None else exc.lineno}, column {exc.colno}"
        raise DataFormatError(str(path), None, None, f"cannot read it as json: {where}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. a number beyond int's digit limit, or nesting too deep
        where = f"line {line}: " if line is not None else ""
        raise DataFormatError(str(path), None, None, f"cannot read it as json: {where}{exc}") from None


def _excerpt(value, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def load_card(name: str) -> BenchmarkCard:
    """A benchmark card by name: user folders (``--cards``) first, then the built-in ones; or a card file
    (``path/to/card.yaml``, ``@VERSION`` allowed after it)."""
    name, _, version = name.partition("@")
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise InputNotFoundError(f"benchmark card {name}: no such file")
        card = BenchmarkCard.load(path)
        return card.with_version(version) if version else card
    for folder in card_dirs("benchmarks"):
        if (folder / f"{name}.yaml").is_file():
            card = BenchmarkCard.load(folder / f"{name}.yaml")
            return card.with_version(version) if version else card
    raise UnknownNameError(f"unknown benchmark {name!r}; known: {', '.join(benchmark_names())} "
                           "(or a data file: .jsonl, .json, .csv, .parquet, or hf:ORG/NAME[:SPLIT])")


def find_card_or_none(name: str) -> BenchmarkCard | None:
    """The card of a benchmark name if there is one (reports label runs of own data by their folder name)."""
    try:
        return load_card(name)
    except UnknownNameError:
        return None


def benchmark_names() -> list[str]:
    """Every benchmark card: built-in and from ``--cards`` folders."""
    return card_names("benchmarks")


def builtin_benchmark_names() -> list[str]:
    return sorted(p.stem for p in card_dir("benchmarks").glob("*.yaml"))
