"""Backends: where tokens come from. Each registers a factory ``(model, **options) -> Backend``."""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import Backend, Completion, GenerationRequest, ScoreRequest

BACKENDS: Registry = Registry("backend", entry_point_group="tract_eval.backends",
                              check=lambda plugin: None if callable(plugin) else f"{plugin!r} is not a backend factory")


@BACKENDS.register("transformers")
def _transformers(model: str | None = None, **options) -> Backend:
    from .transformers_backend import TransformersBackend  # torch loads only when asked for

    return TransformersBackend(model, **options)


def _not_for(backend: str, options: dict, *names: str) -> dict:
    """Drop judge settings that do not apply to ``backend`` while they hold their default ("auto")."""
    for name in names:
        value = options.pop(name, "auto")
        if value not in (None, "auto"):
            raise ConfigError(f"{name}={value!r} does not apply to the {backend} backend (the server decides)")
    return options


@BACKENDS.register("openai")
def _openai(model: str | None = None, **options) -> Backend:
    from .openai_backend import OpenAIBackend  # the openai client loads only when asked for

    return OpenAIBackend(model, **_not_for("openai", dict(options), "device", "dtype"))


def check_vllm_quantization(options: dict) -> None:
    """engine_options={quantization: fp8} is the reference's CoT precision (TRACT inference_utils/
    generation_utils.py:35-36, unless --v100); vLLM's fp8 kernels need a CUDA GPU, so say so before loading."""
    quantization = (options.get("engine_options") or {}).get("quantization")
    if not quantization:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"vllm engine_options quantization={quantization!r} needs a CUDA GPU (fp8: compute "
                          "capability 8.0 or newer, as the reference's A6000); torch sees none here")


@BACKENDS.register("vllm")
def _vllm(model: str | None = None, **options) -> Backend:
    check_vllm_quantization(options)
    from .vllm_backend import VLLMBackend  # vllm loads only when asked for (it lives in its own venv)

    return VLLMBackend(model, **_not_for("vllm", dict(options), "device"))


# Built-in backends: module and class, whose constructor's keyword arguments are the options it takes.
_BUILTIN = {"transformers": ("transformers_backend", "TransformersBackend"),
            "openai": ("openai_backend", "OpenAIBackend"), "vllm": ("vllm_backend", "VLLMBackend")}
JUDGE_SETTINGS = ("device", "dtype")  # judge settings every factory receives (some reject non-"auto" values)


def backend_option_names(name: str) -> list[str] | None:
    """The options a built-in backend takes (None for plugins: they check their own)."""
    import importlib
    import inspect

    if name not in _BUILTIN:
        return None
    module, cls = _BUILTIN[name]
    init = getattr(importlib.import_module(f"{__name__}.{module}"), cls).__init__  # light: heavy imports are inside
    params = inspect.signature(init).parameters
    return sorted({p for p in params if p not in ("self", "model")} | set(JUDGE_SETTINGS))


def check_backend_options(name: str, options: dict) -> None:
    """Reject options the backend does not take, naming the ones it does (before any model loads)."""
    BACKENDS.get(name)  # an unknown backend name fails here, listing the known ones
    known = backend_option_names(name)
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise ConfigError(f"unknown {name} backend option(s) {unknown}; known: {', '.join(known)}")
    if name in _BUILTIN:  # values a built-in backend can check without connecting or loading anything
        import importlib

        check = getattr(importlib.import_module(f"{__name__}.{_BUILTIN[name][0]}"), "check_options", None)
        if check is not None:
            check(options)


_last: tuple[tuple, Backend] | None = None


def create_backend(name: str, model: str | None = None, **options) -> Backend:
    """Build a backend; asking again for the same one reuses it (one model load per process)."""
    global _last
    key = (name, model, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if _last is not None and _last[0] == key:
        return _last[1]
    check_backend_options(name, options)
    _last = None  # drop the previous model before loading another
    backend = BACKENDS.get(name)(model, **options)
    _last = (key, backend)
    return backend


__all__ = ["BACKENDS", "Backend", "Completion", "GenerationRequest", "ScoreRequest", "backend_option_names",
           "check_backend_options", "create_backend"]
