"""Backends: where tokens come from. Each registers a factory ``(model, **options) -> Backend`` and
declares its options, whether it loads weights and its checks (``backends.declaration``)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..judge_config import JudgeConfig
from ..registry import Registry
from .base import Backend, Completion, GenerationRequest, ScoreRequest
from .declaration import BackendDeclaration, score_options
# light: each module imports its heavy library (torch, the openai client, vllm) inside the constructor
from .openai_backend import OpenAIBackend
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend, check_vllm_quantization

BACKENDS: Registry = Registry("backend", entry_point_group="tract_eval.backends",
                              check=lambda plugin: None if callable(plugin) else f"{plugin!r} is not a backend factory")


def _declared(backend: type[Backend]):
    """Give a built-in factory its backend's declaration (what ``declaration_of`` reads)."""
    def mark(factory):
        factory.declaration = backend.declaration
        return factory

    return mark


@BACKENDS.register("transformers")
@_declared(TransformersBackend)
def _transformers(model: str | None = None, **options) -> Backend:
    return TransformersBackend(model, **options)  # torch loads in the constructor, only when asked for


def _not_for(backend: str, options: dict, *names: str) -> dict:
    """Drop judge settings that do not apply to ``backend`` while they hold their default ("auto")."""
    for name in names:
        value = options.pop(name, "auto")
        if value not in (None, "auto"):
            raise ConfigError(f"{name}={value!r} does not apply to the {backend} backend (the server decides)")
    return options


@BACKENDS.register("openai")
@_declared(OpenAIBackend)
def _openai(model: str | None = None, **options) -> Backend:
    return OpenAIBackend(model, **_not_for("openai", dict(options), "device", "dtype"))


@BACKENDS.register("vllm")
@_declared(VLLMBackend)
def _vllm(model: str | None = None, **options) -> Backend:
    return VLLMBackend(model, **_not_for("vllm", dict(options), "device"))  # vllm loads in its constructor


BUILTIN_DECLARATIONS = tuple(b.declaration for b in (TransformersBackend, OpenAIBackend, VLLMBackend))


def declaration_of(name: str) -> BackendDeclaration | None:
    """The backend's declaration; None for a plugin that declares nothing (all its options then score)."""
    return getattr(BACKENDS.get(name), "declaration", None)


def loads_weights(name: str) -> bool:
    """Does the backend load the weights ``model`` names (else a server answers for a served model)?"""
    declaration = declaration_of(name)
    return declaration is not None and declaration.loads_weights


def score_backend_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The backend options that can change a score, as the backend declares them. An option it does not
    declare (a plugin that declares nothing, a backend instance handed in) is as a built-in backend
    declares an option of that name (``base_url`` routes requests whichever backend gets it), else it scores."""
    own = declaration_of(name)
    return score_options(options, ([own] if own is not None else []) + list(BUILTIN_DECLARATIONS))


def backend_option_names(name: str) -> list[str] | None:
    """The options a backend takes (None for a plugin without a declaration: it checks its own)."""
    declaration = declaration_of(name)
    return declaration.option_names() if declaration is not None else None


def check_backend_options(name: str, options: dict) -> None:
    """Reject options the backend does not take, naming the ones it does, then run the backend's own
    checks of their values (before anything connects or loads)."""
    declaration = declaration_of(name)  # an unknown backend name fails here, listing the known ones
    if declaration is None:
        return
    unknown = sorted(set(options) - set(declaration.option_names()))
    if unknown:
        raise ConfigError(f"unknown {name} backend option(s) {unknown}; known: {', '.join(declaration.option_names())}")
    if declaration.check is not None:
        declaration.check(options)


def check_backend_settings(config: JudgeConfig) -> None:
    """Everything about a judge's backend that can be checked before its model loads: the option names,
    their values and the backend's own checks (transformers: --model-args and --device)."""
    check_backend_options(config.backend, {"device": config.device, "dtype": config.dtype, **config.backend_options})


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


__all__ = ["BACKENDS", "Backend", "BackendDeclaration", "Completion", "GenerationRequest", "ScoreRequest",
           "backend_option_names", "check_backend_options", "check_backend_settings", "check_vllm_quantization",
           "create_backend", "declaration_of", "loads_weights", "score_backend_options"]
