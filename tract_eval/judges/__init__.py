"""Judges: built-in ones from YAML cards in ``judges/``, third-party ones from the
``tract_eval.judges`` entry-point group (a Judge subclass with ``default_config()``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..judge_config import JudgeConfig
from ..errors import UnknownNameError
from ..registry import Registry
from .base import Judge
from .cards import builtin_judge_cards, load_judge_card, resolve_card_model

def _not_a_judge(plugin) -> str | None:
    if isinstance(plugin, type) and issubclass(plugin, Judge):
        return None
    return f"{plugin!r} is not a subclass of tract_eval.judges.Judge"


JUDGES: Registry = Registry("judge", entry_point_group="tract_eval.judges", check=_not_a_judge)
JUDGES.register("absolute")(Judge)


def judge_names() -> list[str]:
    """Built-in cards plus plugin judges (judge classes named by cards are not judges themselves)."""
    return sorted(set(builtin_judge_cards()) | {n for n in JUDGES.names() if n != "absolute"})


def load_judge_config(name_or_path: str) -> tuple[JudgeConfig, type[Judge]]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or name_or_path in builtin_judge_cards():
        config = load_judge_card(name_or_path)
        return config, JUDGES.get(config.judge_class)
    if name_or_path in JUDGES:
        cls = JUDGES.get(name_or_path)
        return cls.default_config(), cls
    raise UnknownNameError(f"unknown judge {name_or_path!r}; known: {', '.join(judge_names())} (or a path to a YAML card)")


def build_judge(name_or_path: str, backend=None, **overrides) -> Judge:
    """A judge from a card name/path or a plugin name; ``overrides`` are JudgeConfig/sampling fields."""
    config, cls = load_judge_config(name_or_path)
    if isinstance(backend, str):  # `--backend NAME` is the judge setting, not a Backend instance
        overrides["backend"], backend = backend, None
    model_from_card = config.model is not None and overrides.get("model") is None
    backend_options = overrides.pop("backend_options", None) or {}  # flags win over the card's
    config = config.with_overrides(**overrides)
    if backend_options:
        config = dataclasses.replace(config, backend_options={**config.backend_options, **backend_options})
    note = None
    if model_from_card and backend is None:
        # settled here, once, so the run identity names the model that really runs
        config, note = resolve_card_model(config)
    judge = cls(config, backend=backend)
    judge.model_note = note
    return judge


__all__ = ["JUDGES", "Judge", "build_judge", "builtin_judge_cards", "judge_names", "load_judge_card",
           "load_judge_config"]
