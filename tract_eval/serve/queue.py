"""One grading queue for every request: a worker thread judges what has arrived, together.

HTTP handlers (the event loop) put jobs in; the worker thread owns the model. When a job arrives the
worker waits a moment for more (``gather_s`` after the last arrival, at most ``gather_max_s``), then
hands every waiting row that shares judge settings to ONE call of the runner's judge loop, which
batches them continuously. A row's score does not depend on what it was batched with (each CoT has
its own random stream, seeded by the row's id), so ``grade_many`` on a request's rows gives its
scores. Rows that arrive while a batch runs wait for the next one.

A job cancelled while it waits (its client went away) leaves the queue at once; one cancelled while
its batch runs has its rows discarded when they finish. ``stop`` fails every job and aborts the
running batch at its next finished row.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from ..records import Prediction

log = logging.getLogger(__name__)

TICKET = "serve_ticket"  # a row's place in its batch, carried in the sample's meta (ids repeat across jobs)


class ShuttingDown(RuntimeError):
    """The server is stopping: queued and running jobs end with this."""


class _Aborted(Exception):
    """Raised from the row callback to leave a running batch when the queue stops."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Per-request judge settings (None: the server's)."""

    n_cot: int | None = None
    seed: int | None = None


@dataclasses.dataclass(eq=False)
class Job:
    samples: list  # tract_eval.benchmarks.Sample, checked by api.grading_samples
    settings: Settings
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    rows: list = dataclasses.field(default_factory=list)
    left: int = 0
    cancelled: bool = False

    def __post_init__(self):
        self.rows = [None] * len(self.samples)
        self.left = len(self.samples)


class GradingQueue:
    """``judge_of(settings)`` gives the judge of a settings key (the model loads once; judges are cheap)."""

    def __init__(self, judge_of: Callable[[Settings], object], gather_s: float = 0.01, gather_max_s: float = 0.1,
                 judge_cache: int = 16):
        self._judge_of = judge_of
        self._judges: OrderedDict[Settings, object] = OrderedDict()
        self._judge_cache = judge_cache
        self._judges_lock = threading.Lock()
        self.gather_s, self.gather_max_s = gather_s, gather_max_s
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._changed = threading.Condition()
        self._stopping = False
        self.batches = 0  # model calls made (each judges every row that was waiting for it)
        self.rows_judged = 0
        self._thread = threading.Thread(target=self._work, name="tract-eval-grading", daemon=True)

    def start(self) -> "GradingQueue":
        self.judge(Settings())  # builds the default judge (and loads the model) before the first request
        self._thread.start()
        return self

    @property
    def busy(self) -> bool:
        """The worker thread is still running (inside a batch, after ``stop``)."""
        return self._thread.is_alive()

    @property
    def ready(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def judge(self, settings: Settings):
        with self._judges_lock:  # the worker and /health both ask
            if settings not in self._judges:
                self._judges[settings] = self._judge_of(settings)
                while len(self._judges) > self._judge_cache:
                    self._judges.popitem(last=False)
            self._judges.move_to_end(settings)
            return self._judges[settings]

    # -- the handlers' side ---------------------------------------------------------------
    def submit(self, samples: list, settings: Settings = Settings()) -> Job:
        job = Job(list(samples), settings)
        with self._changed:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if not job.samples:
                job.future.set_result([])
            else:
                self._waiting.append(job)
                self._changed.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """The job's client left: out of the queue if it still waits, else its rows are dropped when done."""
        with self._changed:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
            if not job.future.done():
                job.future.cancel()

    def counts(self) -> dict:
        with self._changed:
            return {"queued_rows": sum(len(j.samples) for j in self._waiting),
                    "running_rows": sum(len(j.samples) for j in self._running if not j.cancelled),
                    "batches": self.batches, "rows_judged": self.rows_judged}

    def stop(self, timeout: float = 5.0) -> None:
        """Fail every queued and running job; the worker leaves the running batch at its next row."""
        with self._changed:
            self._stopping = True
            jobs, self._waiting = self._waiting + self._running, []
            self._changed.notify_all()
        for job in jobs:
            _settle(job.future, error=ShuttingDown("the server is shutting down"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._judge_batch(batch)
            except _Aborted:
                return
            except Exception as exc:  # a failed batch fails its requests, never the server
                log.exception("grading batch failed")
                for job in batch:
                    _settle(job.future, error=exc)
            finally:
                with self._changed:
                    self._running = []

    def _next_batch(self) -> list[Job] | None:
        """Every waiting job with the first one's settings, once arrivals pause (or None when stopping)."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.gather_max_s
            while True:  # gather: until no job arrived for gather_s, or gather_max_s in all
                count, left = len(self._waiting), deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(self.gather_s, left))  # a new arrival wakes it: wait again
                if self._stopping:
                    return None
                if len(self._waiting) == count:
                    break
            if not self._waiting:  # all cancelled while gathering
                return []
            settings = self._waiting[0].settings
            batch = [job for job in self._waiting if job.settings == settings]
            self._waiting = [job for job in self._waiting if job.settings != settings]
            self._running = batch
            self.batches += 1
        return batch

    def _judge_batch(self, batch: list[Job]) -> None:
        from ..runner import _too_long_rows, judge_pending

        if not batch:
            return
        judge = self.judge(batch[0].settings)
        places, samples = {}, []
        for job, (index, sample) in ((j, pair) for j in batch for pair in enumerate(j.samples)):
            ticket = len(samples)
            places[ticket] = (job, index)
            samples.append(dataclasses.replace(sample, meta={**sample.meta, TICKET: ticket}))

        def deliver(row: Prediction) -> None:
            if self._stopping:
                raise _Aborted
            job, index = places[row.meta[TICKET]]
            row.meta = {k: v for k, v in row.meta.items() if k != TICKET}
            job.rows[index] = row
            job.left -= 1
            self.rows_judged += 1
            if job.left == 0 and not job.cancelled:
                _settle(job.future, result=job.rows)

        too_long = _too_long_rows(judge, samples, "mark")  # judged by nobody: the others still are
        skipped = {row.meta[TICKET] for row in too_long}
        for row in too_long:
            deliver(row)
        live = [s for s in samples if s.meta[TICKET] not in skipped and not places[s.meta[TICKET]][0].cancelled]
        if live:
            judge_pending(judge, live, deliver, batch_size=judge.config.batch_size)


def _settle(future: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it has one (a cancelled or already failed job)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # settled by another thread in between
        pass

