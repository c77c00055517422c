"""Running a judge over a benchmark: resumable predictions, metrics and a manifest per (judge, bench).

Layout: ``OUT/<judge>/<bench>/{predictions.jsonl, metrics.json, manifest.json}``; a shard
``i/n`` writes to ``OUT/<judge>/<bench>/shards/<i>-of-<n>/`` and ``merge`` combines them.
Each finished sample is appended and fsynced at once, so a killed run (even SIGKILL) loses
at most the samples in flight; a torn last line is dropped on the next start.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .benchmarks import Benchmark, Sample
from .judges import Judge
from .metrics import generation_summary
from .records import MANIFEST, METRICS, PREDICTIONS, JsonlAppender, read_predictions, write_json_atomic


class RunConflict(RuntimeError):
    """The output folder holds a run made with another judge config or seed."""




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
        raise ValueError(f"--shard takes i/n (e.g. 0/4), not {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
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


def run_dir(out: Path, judge: str, bench: str, shard: tuple[int, int] | None = None) -> Path:
    base = Path(out) / judge / bench
    return base / "shards" / f"{shard[0]}-of-{shard[1]}" if shard else base


def _check_manifest(path: Path, judge: Judge) -> dict | None:
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    old, new = manifest.get("fingerprint"), judge.config.fingerprint()
    if old != new:
        old_cfg = manifest.get("judge", {})
        new_cfg = judge.config.to_dict()
        changed = sorted(k for k in set(old_cfg) | set(new_cfg)
                         if k not in ("batch_size", "device", "description") and old_cfg.get(k) != new_cfg.get(k))
        raise RunConflict(
            f"{path.parent} holds a run of judge config {old} but this run is {new} "
            f"(changed: {', '.join(changed) or 'unknown'}). Use another --out, or delete that folder to start over."
        )
    return manifest


def run_benchmark(judge: Judge, bench: Benchmark, out: Path, limit: int | None = None,
                  shard: tuple[int, int] | None = None, batch_size: int | None = None,
                  progress=None) -> RunResult:
    """Judge the selected samples that are not yet in the predictions file, then score all of them."""
    target = run_dir(out, judge.name, bench.name, shard)
    target.mkdir(parents=True, exist_ok=True)
    manifest_path = target / MANIFEST
    manifest = _check_manifest(manifest_path, judge)
    predictions_path = target / PREDICTIONS
    existing = {row["id"]: row for row in read_predictions(predictions_path, repair=True)}
    selected = shard_samples(bench.select(limit), shard)
    todo = [s for s in selected if s.id not in existing]
    started = time.perf_counter()
    if manifest is None:
        manifest = {
            "judge": judge.config.to_dict(),
            "fingerprint": judge.config.fingerprint(),
            "seed": judge.config.seed,
            "bench": bench.describe(),
            "shard": list(shard) if shard else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "git_revision": git_revision(),
            "command": sys.argv,
        }
        write_json_atomic(manifest_path, manifest)
    if todo:
        writer = JsonlAppender(predictions_path)
        # the whole queue goes to the backend; the batch size counts sequences (samples x CoTs)
        # decoding at once, and a finished sequence's slot goes to the next one (continuous batching)

        def on_row(row):
            writer(row)
            existing[row.id] = row.to_dict()
            if progress:
                progress(1)

        try:
            judge.judge(todo, on_row=on_row, batch_size=batch_size or judge.config.batch_size)
        finally:
            writer.close()
        manifest.update({
            "backend": judge.backend.describe(),
            "model_note": judge.model_note,
            "candidates": judge.candidates.to_dict() if judge.config.predictor == "rail" else None,
            "judge": judge.config.to_dict(),
        })
        manifest.setdefault("sessions", []).append({
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "new_samples": len(todo),
            "seconds": round(time.perf_counter() - started, 2),
            "git_revision": git_revision(),
        })
        write_json_atomic(manifest_path, manifest)
    rows = [existing[s.id] for s in selected]
    metrics = {"judge": judge.name, "bench": bench.name, "kind": bench.kind, **bench.metrics(rows),
               "generation": generation_summary(rows)}
    write_json_atomic(target / METRICS, metrics)
    return RunResult(judge.name, bench.name, target, metrics, len(todo), len(selected) - len(todo),
                     time.perf_counter() - started, bench.kind)


def merge_shards(bench_dir: Path, bench: Benchmark) -> dict:
    """Combine ``shards/*/predictions.jsonl`` into ``bench_dir/predictions.jsonl`` and rescore."""
    shard_dirs = sorted((bench_dir / "shards").glob("*-of-*"))
    if not shard_dirs:
        raise FileNotFoundError(f"{bench_dir}/shards holds no shard folders")
    manifests = [json.loads((d / MANIFEST).read_text()) for d in shard_dirs]
    prints = {m["fingerprint"] for m in manifests}
    if len(prints) != 1:
        raise RunConflict(f"shards under {bench_dir} come from different judge configs: {sorted(prints)}")
    counts = {m["shard"][1] for m in manifests}
    if len(counts) != 1 or len(shard_dirs) != counts.pop():
        raise ValueError(f"{bench_dir}: expected every shard of one split, found {[d.name for d in shard_dirs]}")
    merged: dict[str, dict] = {}
    main_path = bench_dir / PREDICTIONS
    if main_path.is_file():
        merged.update({r["id"]: r for r in read_predictions(main_path)})
    for d in shard_dirs:
        for row in read_predictions(d / PREDICTIONS):
            merged[row["id"]] = row
    order = {s.id: i for i, s in enumerate(bench.samples)}
    rows = sorted(merged.values(), key=lambda r: order.get(r["id"], len(order)))
    tmp = main_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, main_path)
    manifest = dict(manifests[0], shard=None, merged_from=[str(d) for d in shard_dirs])
    manifest["sessions"] = [s for m in manifests for s in m.get("sessions", [])]
    write_json_atomic(bench_dir / MANIFEST, manifest)
    metrics = {"judge": manifest["judge"]["name"], "bench": bench.name, "kind": bench.kind, **bench.metrics(rows),
               "generation": generation_summary(rows)}
    write_json_atomic(bench_dir / METRICS, metrics)
    return metrics
