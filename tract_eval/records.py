"""Typed prediction records and the run files: names, one fsynced JSONL appender, one reader.

Every piece of code that writes or reads ``predictions.jsonl`` (the runner, merge, reports, the
CoT cache) goes through this module, so a row has one shape and a torn line one rule.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
RESULTS = "results.json"
SHARDS = "shards"  # OUT/<judge>/<bench>/shards/<i>-of-<n>/: parts of one run, combined by `merge`
LOCK = ".lock"  # held (flock) by the one process writing a run folder

# Row statuses. ``ok``: scored; ``parse_failure``: no score could be read (excluded by default);
# ``fallback``: unparsed, scored with the judge's fallback score; ``partial_candidates``: a top-k
# readout omitted score candidates, so the distribution is incomplete; ``too_long``: the prompt
# plus the generation budget exceeds the model's context and the row was not judged.
STATUSES = ("ok", "parse_failure", "fallback", "partial_candidates", "too_long")
FAILED_STATUSES = ("parse_failure", "fallback")  # no score could be read from the model's output
FAILURE_CAUSES = ("server", "model")


class RunFormatError(UserError, ValueError):
    """A run folder or one of its files does not have the shape ``tract-eval run`` writes."""


class CorruptPredictions(RunFormatError):
    """A predictions file has a malformed line other than a torn last one."""


class RowFormatError(ValueError):
    """A JSON object that is not a prediction row (a field missing or of the wrong type)."""


@dataclass(frozen=True)
class PairMeta:
    """Where a pairwise (RewardBench) row belongs: its pair, the pair's side, subset and section."""

    pair_id: str
    side: str  # "chosen" or "rejected"
    subset: str
    section: str

    FIELDS = ("pair_id", "side", "subset", "section")

    @classmethod
    def from_meta(cls, meta: dict) -> "PairMeta | None":
        """The pair a row's ``meta`` names; None for a row of an absolute benchmark (no ``side``)."""
        if "side" not in meta:
            return None
        missing = [f for f in cls.FIELDS if f not in meta]
        if missing:
            raise RowFormatError(f"meta names a side but lacks {', '.join(missing)}")
        return cls(*(str(meta[f]) for f in cls.FIELDS))


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


# what a reader relies on, checked when a row is read back: field -> (test, what it must be)
_ROW_FIELDS = {
    "id": (lambda v: isinstance(v, str), "a string"),
    "gold": (_number_or_none, "a number or null"),
    "prediction": (_number_or_none, "a number or null"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "per_cot": (lambda v: isinstance(v, list) and all(_number_or_none(x) for x in v), "a list of numbers or nulls"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
}


@dataclass
class Prediction:
    """One judged sample: one line of ``predictions.jsonl`` (fields: docs/reference/run-files.md)."""

    id: str
    gold: float | None
    prediction: float | None  # mean of the parsed ``per_cot`` values, or the fallback, or None
    status: str
    per_cot: list[float | None] = field(default_factory=list)
    cots: list[str] = field(default_factory=list)
    score_probs: list[dict[str, float]] = field(default_factory=list)  # renormalised over candidates
    raw_probs: list[dict[str, float]] = field(default_factory=list)  # full-vocabulary probabilities
    candidate_mass: list[float] = field(default_factory=list)
    missing_candidates: list[list[int]] = field(default_factory=list)  # per CoT, from top-k readouts
    finish_reasons: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)  # per CoT: regenerations after unparsable output
    cot_parse_failures: int = 0
    errors: list[str] = field(default_factory=list)  # per failed CoT: why (e.g. an excerpt of a malformed response)
    # a failed row (parse_failure, fallback): "server" when the transport or the server failed (a malformed
    # or impossible answer; retried by the next run), "model" when the model's text had no score (kept)
    failure: str | None = None
    input: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"prediction {self.id!r}: unknown status {self.status!r}; known: {', '.join(STATUSES)}")

    @property
    def failed(self) -> bool:
        """No score could be read from the model's output (a fallback score may stand in for it)."""
        return self.status in FAILED_STATUSES

    @property
    def unscored(self) -> bool:
        """No score of its own: a failure (even with a fallback score standing in) or no prediction at all
        (too long, partial candidates)."""
        return self.failed or self.prediction is None

    @property
    def scored(self) -> bool:
        """Both a gold label and a prediction: the row enters correlations and errors."""
        return self.prediction is not None and self.gold is not None

    @property
    def pair(self) -> PairMeta | None:
        """The pair of a pairwise benchmark's row; None on absolute benchmarks."""
        return PairMeta.from_meta(self.meta)

    @property
    def key(self) -> str:
        """Unique within a run: ``subset/id/side`` where given (RewardBench ids repeat across subsets)."""
        pair = self.pair
        return "/".join((pair.subset, self.id, pair.side)) if pair else self.id

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def failure_cause(self) -> str | None:
        """``failure``, inferred for rows written before it was recorded: a failed row that quotes errors
        failed at the server (only server answers put text in ``errors``), else at the model."""
        if self.status not in FAILED_STATUSES:
            return None
        return self.failure or ("server" if self.errors else "model")

    @classmethod
    def from_dict(cls, data: dict) -> "Prediction":
        """A row as written; raises :class:`RowFormatError` naming the first field a reader cannot use."""
        if not isinstance(data, dict):
            raise RowFormatError(f"is a JSON {type(data).__name__}, not an object")
        for name, (valid, expected) in _ROW_FIELDS.items():
            if name in data and not valid(data[name]):
                raise RowFormatError(f"field {name!r} must be {expected}, not {data[name]!r:.60}")
        missing = [name for name in ("id", "gold", "prediction", "status") if name not in data]
        if missing:
            raise RowFormatError(f"has no field {missing[0]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in known})
        row.pair  # a pairwise row names its whole pair
        return row


# identity settings one side has and the other lacks
ABSENT = object()


def normalise(value: Any) -> Any:
    """The JSON form of ``value``: tuples become lists, keys are sorted, so equal settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 60) -> str:
    text = "(absent)" if value is ABSENT else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def identity_differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """``path: theirs -> ours`` for every leaf that differs between two run identities (or parts of
    them, as manifests record them)."""
    theirs, ours = _flatten(normalise(theirs), prefix), _flatten(normalise(ours), prefix)
    return [f"{key}: {_short(theirs.get(key, ABSENT))} -> {_short(ours.get(key, ABSENT))}"
            for key in sorted(set(theirs) | set(ours)) if theirs.get(key, ABSENT) != ours.get(key, ABSENT)]


@dataclass
class Manifest:
    """``manifest.json`` read back: what made a run (its identity and fingerprint), the judge's settings,
    the benchmark as loaded, the backend and candidates, and one entry per session that wrote rows."""

    fingerprint: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # judge / model / bench parts that can change a score
    judge: dict[str, Any] = field(default_factory=dict)  # the judge's whole configuration (secrets redacted)
    bench: dict[str, Any] = field(default_factory=dict)  # the benchmark as loaded (kind, scale, options, sections)
    seed: int | None = None
    shard: list[int] | None = None
    model_note: str | None = None
    created: str | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the file as written, every key

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        for name in ("identity", "judge", "bench", "backend"):
            if not isinstance(values.get(name, {}), dict):
                raise RowFormatError(f"field {name!r} must be an object")
        return cls(**values, raw=data)

    @property
    def bench_kind(self) -> str | None:
        """"absolute" or "pairwise", as the benchmark card said when the run was made."""
        return self.bench.get("kind")

    @property
    def scale(self) -> tuple[float, float] | None:
        scale = self.judge.get("scale") or self.bench.get("scale")
        return (scale[0], scale[1]) if scale else None

    @property
    def bench_options(self) -> dict[str, Any]:
        return self.bench.get("options") or {}


@dataclass
class Metrics:
    """``metrics.json`` read back. Absolute benchmarks fill the correlations; pairwise ones ``score``,
    ``sections`` and ``subsets``; ``raw`` keeps every key as written."""

    judge: str | None = None
    bench: str | None = None
    kind: str | None = None
    n: int | None = None
    n_total: int | None = None
    pearson: float | None = None
    spearman: float | None = None
    kendall: float | None = None
    rmse: float | None = None
    parse_failures: int | None = None
    score: float | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    subsets: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Metrics":
        known = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None}, raw=data)


def read_json_object(path: Path) -> dict | None:
    """A JSON object file of a run folder (manifest, metrics); None when absent; anything else fails
    naming the file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RunFormatError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def read_manifest(path: Path) -> Manifest | None:
    data = read_json_object(path)
    if data is None:
        return None
    try:
        return Manifest.from_dict(data)
    except (RowFormatError, TypeError) as exc:
        raise RunFormatError(f"{path}: {exc}") from exc


def read_metrics(path: Path) -> Metrics | None:
    data = read_json_object(path)
    return None if data is None else Metrics.from_dict(data)


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, fsync it, then rename it over ``path``: readers and a crash
    see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    _replace_atomically(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl_atomic(path: Path, records: list[Prediction | dict]) -> None:
    """A whole JSONL file at once (``merge``); rows are appended with :class:`JsonlAppender` otherwise."""
    _replace_atomically(path, "".join(
        json.dumps(r.to_dict() if isinstance(r, Prediction) else r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path, repair: bool = False) -> list:
    """Objects of a JSONL file. A torn last line (killed mid-write) is dropped, and with ``repair``
    cut off the file; a bad line anywhere else is an error naming the file and line."""
    return [value for _, value in _numbered_jsonl(path, repair)]


def _numbered_jsonl(path: Path, repair: bool) -> list[tuple[int, object]]:
    """(line number, object) per non-blank line of :func:`read_jsonl`."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows, good_bytes = [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            rows.append((number, json.loads(line)))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            is_last = all(not rest.strip() for rest in lines[number:])
            if not is_last:
                raise CorruptPredictions(f"{path}: line {number} is not valid JSON ({exc}); fix or remove it") from exc
            if repair:
                with open(path, "r+b") as fh:
                    fh.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return rows


def read_predictions(path: Path, repair: bool = False) -> list[Prediction]:
    """Rows of a predictions file as :class:`Prediction` objects (a torn last line as in :func:`read_jsonl`);
    a line that is JSON but not a row fails naming the file, line and field. A sample written twice is
    refused the same way by every reader (run, merge, report, compare): which of two rows counts would
    otherwise depend on the command."""
    rows, first_line = [], {}
    for number, data in _numbered_jsonl(Path(path), repair):
        try:
            row = Prediction.from_dict(data)
        except (RowFormatError, TypeError, ValueError) as exc:
            raise CorruptPredictions(f"{path}: line {number} {exc}") from exc
        if row.key in first_line:
            raise CorruptPredictions(f"{path}: line {number} repeats sample {row.key!r} (first on line "
                                     f"{first_line[row.key]}); remove one of the two lines")
        first_line[row.key] = number
        rows.append(row)
    return rows


class JsonlAppender:
    """Appends one JSON line per record, flushed and fsynced, so a killed run keeps every finished row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def __call__(self, record: Prediction | dict) -> None:
        data = record.to_dict() if isinstance(record, Prediction) else record
        self._fh.write(json.dumps(data, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLocked(UserError, RuntimeError):
    """Another process is writing this run folder."""


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock`` for as long as a run writes the folder.

    The kernel drops the lock when its process dies (even by SIGKILL), so a lock is never stale;
    the file names the holder (pid, host, start time) for the message a second run prints.
    """

    def __init__(self, folder: Path, name: str = LOCK, guards: Path | None = None, flag: str = "--out"):
        self.path = Path(folder) / name
        self.guards = Path(guards) if guards is not None else Path(folder)  # what the message names
        self.flag = flag  # the option that picks another place, for the message
        self._fh = None

    @classmethod
    def of_file(cls, path: Path, flag: str) -> "RunLock":
        """A lock on one file (``.NAME.lock`` beside it), for a file that shares its folder with others."""
        path = Path(path)
        return cls(path.parent, f".{path.name}.lock", guards=path, flag=flag)

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLocked(f"{self.guards} is being written by {holder}; wait for it to finish "
                            f"(or use another {self.flag})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
