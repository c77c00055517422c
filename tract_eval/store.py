"""One resumable store of judged rows: how the runner, training's self-generated CoTs and the scaling
CoT cache save rows and resume after a kill.

A store is one JSONL file of rows, written by one process at a time (:class:`records.RunLock`), and,
where what wrote the rows must be known, a manifest beside it holding their identity. Opening a store
(``with store:``) takes the lock and reads the finished rows back, cutting off a torn last line (a
process killed mid-write), so appending resumes on a clean line. Rows are appended through one fsynced
:class:`records.JsonlAppender` for the whole session: a killed process (even SIGKILL) loses at most
the rows in flight. A manifest of another identity is refused naming the differences.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from .errors import UserError
from .records import (MANIFEST, PREDICTIONS, JsonlAppender, RunFormatError, RunLock, read_json_object, read_jsonl,
                      read_predictions, write_json_atomic, write_jsonl_atomic)

log = logging.getLogger(__name__)

UNFINISHED = "interrupted (killed, or its end could not be recorded)"


class RunConflict(UserError, RuntimeError):
    """The output folder holds a run of another identity (judge settings, model or data)."""


class Identity(Protocol):
    """What wrote a store's rows, as its manifest records it (:class:`identity.RunIdentity`)."""

    @property
    def fingerprint(self) -> str: ...

    def to_dict(self) -> dict: ...

    def differences(self, other: dict | None) -> list[str]:
        """``path: theirs -> ours`` for every setting that differs from the recorded identity ``other``."""


def latest_by_id(rows: dict, record) -> None:
    """The usual view of a store: the row of each sample id (a JSON object or a :class:`records.Prediction`)."""
    rows[record["id"] if isinstance(record, dict) else record.id] = record


class RunStore:
    """A resumable file of rows: its lock, its finished rows, one appender, and optionally a manifest.

    ``read(path, repair)`` reads the file's records (:func:`records.read_jsonl` or
    :func:`records.read_predictions`); ``fold(rows, record)`` adds one record to the view ``rows``, on
    reading and on appending alike (by default the record of each sample id: :func:`latest_by_id`).
    ``unrecorded_ok``: rows without a manifest (written before manifests were) are kept as this
    identity's instead of refused.
    """

    def __init__(self, path: Path, lock: RunLock, *, read: Callable = read_jsonl, fold: Callable = latest_by_id,
                 manifest: Path | None = None, owns_folder: bool = False, unrecorded_ok: bool = False):
        self.path = Path(path)
        self.lock = lock
        self.manifest_path = Path(manifest) if manifest is not None else None
        self.manifest: dict | None = None
        self.rows: dict[str, Any] = {}
        self.owns_folder = owns_folder  # the folder is the store's alone: its stray temporaries are ours
        self.unrecorded_ok = unrecorded_ok
        self._read, self._fold = read, fold
        self._appender: JsonlAppender | None = None

    @classmethod
    def run_folder(cls, folder: Path) -> "RunStore":
        """A run folder: ``predictions.jsonl``, ``manifest.json`` (identity and sessions), the folder's lock."""
        folder = Path(folder)
        return cls(folder / PREDICTIONS, RunLock(folder), read=read_predictions, manifest=folder / MANIFEST,
                   owns_folder=True)

    @classmethod
    def file(cls, path: Path, flag: str, **options) -> "RunStore":
        """A file that shares its folder with others' files, locked on its own; ``flag`` is the option that
        names another place (for the message when it is locked)."""
        return cls(path, RunLock.of_file(path, flag), **options)

    @property
    def subject(self) -> Path:
        """What the store's messages name: its folder, or its file."""
        return self.lock.guards

    @property
    def noun(self) -> str:
        return "folder" if self.owns_folder else "file"

    # -- a session: lock, read back, append, release --------------------------------------------------------
    def __enter__(self) -> "RunStore":
        self.lock.acquire()
        try:
            self._remove_stale_temporaries()
            self.load(repair=True)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._close_appender()
        finally:
            self.lock.release()

    def load(self, repair: bool = False) -> None:
        """Read the finished rows back into ``rows``. A torn last line is skipped, and with ``repair``
        (only while the lock is held: a writer may be mid-line otherwise) cut off the file."""
        self.rows.clear()  # in place: a user may hold the view
        for record in self._read(self.path, repair=repair):
            self._fold(self.rows, record)

    def pending(self, samples: Iterable) -> list:
        """The samples (anything with an ``id``) that have no row yet."""
        return [s for s in samples if s.id not in self.rows]

    def open_appender(self) -> JsonlAppender:
        """The session's one appender (the file exists from here on), opened at most once per session."""
        if not self.lock.held:
            raise RuntimeError(f"{self.path}: rows are appended only while the store is open (its lock held)")
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        return self._appender

    def append(self, record) -> None:
        """Write one row (fsynced) and add it to ``rows``."""
        self.open_appender()(record)
        self._fold(self.rows, record)

    def drop(self, ids: Iterable[str]) -> None:
        """Rows to write again leave the file first (one atomic rewrite), so it never holds two rows of one
        sample. For views of one record per id (:func:`latest_by_id`)."""
        ids = list(ids)
        if not ids:
            return
        for sample_id in ids:
            del self.rows[sample_id]
        self._close_appender()  # it would append to the replaced file
        write_jsonl_atomic(self.path, list(self.rows.values()))

    def _close_appender(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def _remove_stale_temporaries(self) -> None:
        """``*.tmp`` files an atomic write left when it failed (disk full) or was killed: never read, removed."""
        if self.owns_folder:
            stale = list(self.path.parent.glob("*.tmp"))
        else:
            stale = [p.with_name(p.name + ".tmp") for p in (self.path, self.manifest_path) if p is not None]
        for tmp in stale:
            if tmp.exists():
                log.info("%s: removing %s, left by an interrupted write", self.subject, tmp.name)
                tmp.unlink(missing_ok=True)

    # -- the manifest: what wrote the rows -------------------------------------------------------------------
    def claim(self, identity: Identity, fresh: Callable[[], dict]) -> dict:
        """The manifest of this identity: the one on disk, or ``fresh()`` when the store starts afresh (a
        rows file of an attempt that finished nothing, maybe a torn line, is removed). Saved by
        :meth:`save_manifest`."""
        manifest = self._open_manifest(identity)
        if manifest is None:
            if not self.rows and self.path.exists():
                self.path.unlink()
            manifest = fresh()
        self.manifest = manifest
        return manifest

    def _open_manifest(self, identity: Identity) -> dict | None:
        """The manifest when it holds this identity; None when the store starts afresh.

        A store of another identity is refused naming the differences, unless it holds no finished
        rows (a failed first attempt never blocks the corrected command).
        """
        path, has_rows = self.manifest_path, bool(self.rows)
        if not path.is_file():
            if has_rows:
                self._unrecorded()
            return None
        try:
            manifest = read_json_object(path)
        except RunFormatError as exc:  # not JSON, or JSON but not an object
            if has_rows:
                raise RunConflict(f"{exc}; the {self.noun}'s run cannot be identified") from exc
            return None
        if manifest.get("fingerprint") == identity.fingerprint:
            return manifest
        if not has_rows:
            log.warning("%s: replacing the manifest of an attempt that finished no rows", self.subject)
            return None
        changes = identity.differences(manifest.get("identity"))
        raise RunConflict(
            f"{self.subject} holds a run of another identity ({manifest.get('fingerprint')}, this run is "
            f"{identity.fingerprint}); changed: " + "; ".join(changes)
            + f". Use another {self.lock.flag}, or delete that {self.noun} to start over."
        )

    def _unrecorded(self) -> None:
        """Rows without a manifest: refused (what made them is unknown), or kept where that was the format."""
        if not self.unrecorded_ok:
            raise RunConflict(f"{self.subject} holds predictions but no {self.manifest_path.name}, so what made "
                              f"them is unknown; use another {self.lock.flag}, or delete that {self.noun} to "
                              "start over")
        log.warning("%s: no %s says what wrote its %d row(s); they are kept, and this run's identity is "
                    "recorded", self.subject, self.manifest_path.name, len(self.rows))

    def save_manifest(self) -> None:
        write_json_atomic(self.manifest_path, self.manifest)

    def close_unfinished_sessions(self) -> None:
        """Sessions still ``running`` when the lock is free were killed (SIGKILL) or could not write their
        end (disk full): say so."""
        for session in self.manifest.get("sessions", []):
            if session.get("ended") == "running":
                session["ended"] = UNFINISHED

    def begin_session(self, session: dict) -> dict:
        """Record ``session`` (``ended: running``) before its first row, so a run killed or stopped by a full
        disk still shows; the caller marks its end and saves the manifest again."""
        session = {**session, "ended": "running"}
        self.manifest.setdefault("sessions", []).append(session)
        self.save_manifest()
        self.open_appender()
        return session
