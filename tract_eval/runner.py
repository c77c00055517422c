"""Running a judge over a benchmark: resumable predictions, metrics and a manifest per (judge, bench).

Layout: ``OUT/<judge>/<bench>/{predictions.jsonl, metrics.json, manifest.json}``; a shard
``i/n`` writes to ``OUT/<judge>/<bench>/shards/<i>-of-<n>/`` and ``merge`` combines them.
Each finished sample is appended and fsynced at once, so a killed run (even SIGKILL) loses
at most the samples in flight; a torn last line is dropped on the next start.
"""
from __future__ import annotations

import contextlib
import logging
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Container
from importlib import metadata
from pathlib import Path

from .backends import loads_weights
from .benchmarks import Benchmark, DataFormatError, Sample
from .errors import ConfigError, InputNotFoundError, ServerError
from .judges import Judge
from .judges.base import row_meta
from .metrics import generation_summary
from .records import (MANIFEST, METRICS, PREDICTIONS, SHARDS, Prediction, RunFormatError, RunLock, read_json_object,
                      read_predictions, write_json_atomic, write_jsonl_atomic)
from .redaction import redact, redact_text
from .identity import RunIdentity, bench_identity, run_identity
from .store import UNFINISHED, RunConflict, RunStore  # noqa: F401 - UNFINISHED and RunConflict: the runner's names too

log = logging.getLogger(__name__)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tract-eval", "torch", "transformers", "peft", "vllm", "openai", "llama_cpp_python"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@dataclass
class RunResult:
    judge: str
    bench: str
    out_dir: Path
    metrics: dict
    new_samples: int
    reused_samples: int
    seconds: float
    kind: str


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        index, count = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes i/n (e.g. 0/4), not {spec!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {spec}: need 0 <= i < n")
    return index, count


def shard_samples(samples: list[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """Disjoint parts; both sides of a pair stay in one shard."""
    if shard is None:
        return samples
    index, count = shard
    groups: dict[str, int] = {}
    for s in samples:
        groups.setdefault(s.meta.get("pair_id", s.id), len(groups))
    return [s for s in samples if groups[s.meta.get("pair_id", s.id)] % count == index]


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_NAME_CHARS = 128  # file systems take 255 bytes per name; a run folder's name stays well inside


def check_plain_name(name: str, what: str) -> str:
    """Judge and benchmark names become folder names under --out: letters, digits and ``._+-`` only
    (no ``/``, no ``..``), so no name can write outside --out; at most ``MAX_NAME_CHARS`` of them."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"{what} {name!r} cannot be a folder name: use letters, digits and . _ + - "
                          "(no path separators or '..')")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{what} {name[:24]!r}... is {len(name)} characters long; a folder name takes at "
                          f"most {MAX_NAME_CHARS}")
    return name


def check_out_dir(out: Path) -> Path:
    """``--out``: a folder that exists or can be made (checked before any model loads)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create this folder ({exc.strerror or exc})") from None
    return out


def run_dir(out: Path, judge: str, bench: str, shard: tuple[int, int] | None = None) -> Path:
    base = Path(out) / check_plain_name(judge, "judge name") / check_plain_name(bench, "benchmark name")
    return base / SHARDS / f"{shard[0]}-of-{shard[1]}" if shard else base


def _session(judge: Judge, limit: int | None, batch_size: int | None) -> dict:
    """What this process ran with that cannot change a score (recorded, never fingerprinted)."""
    cfg = judge.config
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "command": redact(sys.argv),
        "limit": limit,
        "batch_size": batch_size or cfg.batch_size,
        "device": cfg.device,
        "backend_options": redact(cfg.backend_options),  # all of them; the identity holds the ones that score
        "versions": _versions(),
        "git_revision": git_revision(),
    }


def judge_pending(judge: Judge, samples: list[Sample], sink: Callable[[Prediction], None], *,
                  done: Container[str] = (), batch_size: int | str | None = None, first_cot: int = 0) -> int:
    """The one loop that judges: every sample whose id is not in ``done``, ``batch_size`` sequences
    (samples x CoTs; default the judge's batch size) at a time, each row handed to ``sink`` the moment
    it is finished, so whatever the sink saves survives a kill. Returns the number of rows judged.

    ``run``, the scaling CoT cache, self-generated training CoTs and cot-shift all judge through here;
    ``first_cot`` > 0 adds CoTs ``first_cot ..`` to samples that have the earlier ones.
    """
    pending = [s for s in samples if s.id not in done]
    if not pending:  # nothing to ask the backend (which would still size its buffers for the budget)
        return 0
    check_budget_fits(judge)
    # the whole queue goes to the backend, which keeps ``batch_size`` sequences decoding and gives a
    # finished sequence's slot to the next one (continuous batching)
    judge.judge(pending, first_cot=first_cot, on_row=sink, batch_size=batch_size or judge.config.batch_size)
    return len(pending)


TOO_LONG_POLICIES = ("mark", "refuse")


def _generation_budget(judge: Judge) -> int:
    """Tokens a sample may add after its prompt: the sampled text plus, for RAIL, the forced readout."""
    cfg = judge.config
    budget = cfg.sampling.max_new_tokens if judge.variant.samples_text() else 0
    if judge.variant.uses_candidates:
        c = judge.candidates
        budget += len(c.delimiter_ids) + len(c.bridge_ids) + max(len(seq) for seq in c.sequences)
    return budget


def check_budget_fits(judge: Judge) -> int:
    """The generation budget, refused when it alone fills the model's context (unknown context: not
    checked): no prompt could fit, so the setting is the mistake, and the backend would size its
    buffers for it (``--max-new-tokens 100000000000`` asked for 1.2 TB)."""
    budget = _generation_budget(judge)
    context = judge.backend.context_length()
    if context is not None and budget >= context:
        raise ConfigError(f"--max-new-tokens {judge.config.sampling.max_new_tokens}: the generation budget of "
                          f"{budget} tokens leaves no room for a prompt in the model's context of {context} "
                          "tokens; lower --max-new-tokens")
    return budget


def _too_long_rows(judge: Judge, samples: list[Sample], policy: str) -> list[Prediction]:
    """``too_long`` rows for the samples whose prompt + generation budget exceeds the model's context
    (``policy`` "mark"); "refuse" stops the run naming them instead. Unknown context: nothing is checked."""
    context = judge.backend.context_length()
    if context is None:
        return []
    budget = check_budget_fits(judge)
    rows = []
    for sample in samples:
        text = judge.build_input(sample)
        tokens = judge.backend.count_tokens(text)
        if tokens + budget > context:
            rows.append(Prediction(id=sample.id, gold=sample.gold, prediction=None, status="too_long", input=text,
                                   prompt_tokens=tokens, meta={**row_meta(sample), "context_length": context,
                                                               "generation_budget": budget}))
    if rows and policy == "refuse":
        listed = ", ".join(f"{r.id} ({r.prompt_tokens} tokens)" for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise ConfigError(f"{len(rows)} prompt(s) + the generation budget of {budget} tokens exceed the model's "
                          f"context of {context}: {listed}; lower --max-new-tokens, or --too-long mark to record "
                          "them as too_long rows")
    return rows


def check_gold_in_scale(judge: Judge, bench: Benchmark) -> None:
    """Gold scores outside the judge's scale would be compared with predictions that cannot reach them."""
    low, high = judge.config.scale
    for sample in bench.samples:
        if sample.gold is not None and not low <= sample.gold <= high:
            raise DataFormatError(bench.located.source, sample.meta.get("row"), "gold",
                                  f"sample {sample.id}: gold {sample.gold:g} is outside the judge's scale "
                                  f"[{low}, {high}]")


def status_counts(rows: list[Prediction]) -> dict[str, int]:
    """Rows per status (ok, parse_failure, fallback, partial_candidates, too_long): nothing is silent."""
    counts = Counter(row.status for row in rows)
    return {status: counts[status] for status in sorted(counts, key=str)}


def run_benchmark(judge: Judge, bench: Benchmark, out: Path, limit: int | None = None,
                  shard: tuple[int, int] | None = None, batch_size: int | None = None,
                  progress=None, too_long: str = "mark", rejudge_failures: bool = False) -> RunResult:
    """Judge the selected samples that are not yet in the predictions file, then score all of them.

    ``too_long``: what to do with a sample whose prompt + generation budget exceeds the model's
    context: "mark" writes a ``too_long`` row (no prediction, counted in the metrics), "refuse" stops.
    Failed rows the server caused are judged again; ``rejudge_failures`` redoes the model's too.
    """
    # everything checkable is checked before the model loads
    selected = shard_samples(bench.select(limit), shard)  # a bad --limit fails here
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, not {batch_size}")
    if too_long not in TOO_LONG_POLICIES:
        raise ConfigError(f"--too-long must be one of {', '.join(TOO_LONG_POLICIES)}, not {too_long!r}")
    check_gold_in_scale(judge, bench)
    target = run_dir(check_out_dir(out), judge.name, bench.name, shard)
    identity = run_identity(judge, bench)  # an unavailable model fails here
    with RunStore.run_folder(target) as store, _saying_what_is_kept(store):
        return _run_locked(judge, bench, store, identity, selected, limit, shard, batch_size, progress, too_long,
                           rejudge_failures)


@contextlib.contextmanager
def _saying_what_is_kept(store: RunStore):
    """A server that failed for good ends the run in one line that also says the finished rows are kept."""
    try:
        yield
    except ServerError as exc:
        kept = len(store.rows)
        if not kept:
            raise
        raise ServerError(f"{exc}; the {kept} finished row(s) in {store.path} are kept: rerun the "
                          "same command to resume") from exc


def _run_locked(judge: Judge, bench: Benchmark, store: RunStore, identity: RunIdentity, selected: list[Sample],
                limit, shard, batch_size, progress, too_long: str, rejudge_failures: bool = False) -> RunResult:
    session = _session(judge, limit, batch_size)
    store.claim(identity, lambda: _new_manifest(judge, bench, identity, shard, session["started"]))
    store.drop(_failures_to_redo(store, {s.id for s in selected}, rejudge_failures))
    todo = store.pending(selected)
    started = time.perf_counter()
    store.close_unfinished_sessions()
    if todo:
        _judge_session(judge, todo, store, session, batch_size, progress, too_long, started)
    else:
        store.save_manifest()
    rows = [store.rows[s.id] for s in selected]
    metrics = {"judge": judge.name, "bench": bench.name, "kind": bench.kind, **bench.metrics(rows),
               "statuses": status_counts(rows), "generation": generation_summary(rows)}
    write_json_atomic(store.path.parent / METRICS, metrics)
    return RunResult(judge.name, bench.name, store.path.parent, metrics, len(todo), len(selected) - len(todo),
                     time.perf_counter() - started, bench.kind)


def _new_manifest(judge: Judge, bench: Benchmark, identity: RunIdentity, shard, created: str) -> dict:
    return {
        "identity": identity.to_dict(),
        "fingerprint": identity.fingerprint,
        "judge": redact(judge.config.to_dict()),
        "seed": judge.config.seed,
        "bench": bench.describe(),
        "shard": list(shard) if shard else None,
        "model_note": judge.model_note,
        "created": created,
        "sessions": [],
    }


def _judge_session(judge: Judge, todo: list[Sample], store: RunStore, session: dict, batch_size, progress,
                   too_long: str, started: float) -> None:
    """Judge ``todo`` as one session of the manifest: recorded (``ended: running``) before the first row,
    so a run killed or stopped by a full disk still shows; marked completed or failed when it ends."""
    answered_before = _answering_models(judge)
    _expect_answering_models(judge, store.manifest)
    session = store.begin_session(session)

    def on_row(row: Prediction) -> None:
        store.append(row)
        if progress:
            progress(1)

    def end(how: str) -> None:
        answered = (_answering_models(judge) or Counter()) - (answered_before or Counter())
        store.manifest.update({
            "backend": redact(judge.backend.describe()),
            "model_note": judge.model_note,
            "candidates": judge.candidates.to_dict() if judge.variant.uses_candidates else None,
        })
        session.update({"ended": how, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "new_samples": len(todo), "seconds": round(time.perf_counter() - started, 2),
                        **({"answered_by": sorted(answered)} if answered_before is not None else {})})
        store.save_manifest()

    try:
        for row in _too_long_rows(judge, todo, too_long):
            on_row(row)
        judge_pending(judge, todo, on_row, done=store.rows, batch_size=batch_size)
    except BaseException as exc:
        try:  # best effort: a full disk may refuse this too, and the next run marks the session
            end(redact_text(f"failed: {type(exc).__name__}: {exc}")[:300])
        except Exception:  # noqa: BLE001 - the original error is the one to show
            log.warning("%s: could not mark the session as failed in %s", store.subject, MANIFEST)
        raise
    end("completed")


def _answering_models(judge: Judge) -> Counter | None:
    """The models that answered a served backend's requests so far (None for local backends)."""
    answered = None if loads_weights(judge.config.backend) else getattr(judge.backend, "answered_by", None)
    return Counter(answered) if answered is not None else None


def _expect_answering_models(judge: Judge, manifest: dict) -> None:
    """A served model that answered this folder's earlier rows must answer the new ones."""
    earlier = {m for s in manifest.get("sessions", []) for m in s.get("answered_by", [])}
    if earlier and hasattr(judge.backend, "expected_answer_models"):
        judge.backend.expected_answer_models = earlier


def _failures_to_redo(store: RunStore, selected: set[str], rejudge_failures: bool) -> list[str]:
    """Failed rows to judge again: those the server caused (a transient outage must not leave permanent
    failures), and with ``rejudge_failures`` those the model caused too."""
    redo = []
    for sample_id in selected & store.rows.keys():
        cause = store.rows[sample_id].failure_cause
        if cause == "server" or (cause == "model" and rejudge_failures):
            redo.append(sample_id)
    if redo:
        log.info("%s: judging %d failed row(s) again", store.subject, len(redo))
    return redo


SHARD_MANIFEST_FIELDS = ("identity", "fingerprint", "shard", "bench", "judge")  # what merging reads


def read_shard_manifest(folder: Path) -> dict:
    """A shard's manifest as ``run`` wrote it; anything else fails naming the file."""
    path = folder / MANIFEST
    try:
        manifest = read_json_object(path)
    except RunFormatError as exc:
        raise RunFormatError(f"{exc}; rerun that shard") from exc
    if manifest is None:
        raise RunFormatError(f"{folder}: no {MANIFEST}; rerun that shard")
    missing = [name for name in SHARD_MANIFEST_FIELDS if name not in manifest]
    identity = manifest.get("identity")
    if missing or not isinstance(identity, dict) or set(identity) != {"judge", "model", "bench"}:
        what = f"no field {missing[0]!r}" if missing else "no run identity (judge, model, bench)"
        raise RunFormatError(f"{path}: has {what}; rerun that shard")
    return manifest


def merge_shards(bench_dir: Path, bench: Benchmark) -> dict:
    """Combine ``shards/*/predictions.jsonl`` into ``bench_dir/predictions.jsonl`` and rescore."""
    with RunLock(bench_dir):
        return _merge_locked(bench_dir, bench)


def _merge_locked(bench_dir: Path, bench: Benchmark) -> dict:
    shard_dirs = sorted((bench_dir / SHARDS).glob("*-of-*"))
    if not shard_dirs:
        raise InputNotFoundError(f"{bench_dir}/shards holds no shard folders")
    for d in shard_dirs:  # a shard still being written would be merged half done
        RunLock(d).acquire().release()
    manifests = [read_shard_manifest(d) for d in shard_dirs]
    first = RunIdentity(**manifests[0]["identity"])
    for d, m in zip(shard_dirs[1:], manifests[1:]):
        if m["fingerprint"] != first.fingerprint:
            raise RunConflict(f"{d} is another run identity than {shard_dirs[0]}; changed: "
                              + "; ".join(RunIdentity(**m["identity"]).differences(first.to_dict())))
    if first.bench != bench_identity(bench):  # the data or options changed since the shards ran
        raise RunConflict(f"the shards under {bench_dir} were judged on other data or options than now: "
                          + "; ".join(RunIdentity(first.judge, first.model, bench_identity(bench))
                                      .differences(first.to_dict())))
    main_manifest = bench_dir / MANIFEST
    if (bench_dir / PREDICTIONS).is_file() and read_predictions(bench_dir / PREDICTIONS):
        existing = read_json_object(main_manifest) or {}
        if existing.get("fingerprint") != first.fingerprint:
            raise RunConflict(f"{bench_dir} already holds a run of another identity "
                              f"({existing.get('fingerprint')}) than its shards ({first.fingerprint})")
    counts = {m["shard"][1] for m in manifests}
    if len(counts) != 1 or len(shard_dirs) != counts.pop():
        raise ConfigError(f"{bench_dir}: expected every shard of one split, found {[d.name for d in shard_dirs]}")
    merged: dict[str, Prediction] = {}
    main_path = bench_dir / PREDICTIONS
    if main_path.is_file():
        merged.update({r.id: r for r in read_predictions(main_path)})
    for d in shard_dirs:
        for row in read_predictions(d / PREDICTIONS):
            merged[row.id] = row
    order = {s.id: i for i, s in enumerate(bench.samples)}
    rows = sorted(merged.values(), key=lambda r: order.get(r.id, len(order)))
    write_jsonl_atomic(main_path, rows)
    manifest = dict(manifests[0], shard=None, merged_from=[str(d) for d in shard_dirs])
    manifest["sessions"] = [s for m in manifests for s in m.get("sessions", [])]
    write_json_atomic(bench_dir / MANIFEST, manifest)
    metrics = {"judge": manifest["judge"]["name"], "bench": bench.name, "kind": bench.kind, **bench.metrics(rows),
               "statuses": status_counts(rows), "generation": generation_summary(rows)}
    write_json_atomic(bench_dir / METRICS, metrics)
    return metrics
