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
FAILED_STATUSES = ("parse_failure", "fallback")  # no score was read
FAILURE_CAUSES = ("server", "model")


class CorruptPredictions(UserError, ValueError):
    """A predictions file has a malformed line other than a torn last one."""


@dataclass
class Prediction:
    """One judged sample: what ``predictions.jsonl`` holds, one JSON object per line (see README)."""

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
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Objects of a JSONL file. A torn last line (killed mid-write) is dropped, and with ``repair``
    cut off the file; a bad line anywhere else is an error naming the file and line."""
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
            rows.append(json.loads(line))
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


def read_predictions(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a predictions file as JSON objects (see :func:`read_jsonl`)."""
    return read_jsonl(path, repair=repair)


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

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLocked(f"{self.path.parent} is being written by {holder}; wait for it to finish "
                            "(or use another --out)") from None
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
