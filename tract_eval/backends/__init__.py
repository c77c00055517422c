"""Backends: where tokens come from. Each registers a factory ``(model, **options) -> Backend``."""
from __future__ import annotations

from ..registry import Registry
from .base import Backend, Completion, GenerationRequest, ScoreRequest

BACKENDS: Registry = Registry("backend", entry_point_group="tract_eval.backends")


@BACKENDS.register("transformers")
def _transformers(model: str | None = None, **options) -> Backend:
    from .transformers_backend import TransformersBackend  # torch loads only when asked for

    return TransformersBackend(model, device=options.get("device", "auto"), dtype=options.get("dtype", "auto"))


def create_backend(name: str, model: str | None = None, **options) -> Backend:
    return BACKENDS.get(name)(model, **options)


__all__ = ["BACKENDS", "Backend", "Completion", "GenerationRequest", "ScoreRequest", "create_backend"]
