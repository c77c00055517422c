"""Judge cards: YAML files in ``judges/`` (or a path) read into checked JudgeConfigs, and the card's model
settled before the run identity is taken."""
from __future__ import annotations

import dataclasses
import logging

from ..backends import loads_weights
from ..cards import card_names, find_card
from ..errors import ConfigError
from ..judge_config import JudgeConfig, read_yaml_mapping
from ..models import EMBEDDED_NAME, ModelUnavailable, resolve_model
from ..prompts import check_template_renders, resolve_template
from .variants import variant_type

log = logging.getLogger(__name__)


def load_judge_card(name_or_path: str) -> JudgeConfig:
    """A built-in card name (``judges/<name>.yaml``) or a path to a YAML card."""
    path = find_card("judges", name_or_path, "judge card")
    data = read_yaml_mapping(path)
    data.setdefault("name", path.stem)
    known = {f.name for f in dataclasses.fields(JudgeConfig)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown judge settings {sorted(unknown)}; known: {sorted(known)}")
    try:
        config = JudgeConfig(**data)
        variant_type(config)  # the protocol names a variant
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    # checked here, so a missing, misplaced or unsafe template stops before any model loads
    config = dataclasses.replace(config, template=resolve_template(config.template, path))
    check_template_renders(config.template, config.name)
    return config


def builtin_judge_cards() -> list[str]:
    return card_names("judges")


def resolve_card_model(config: JudgeConfig) -> tuple[JudgeConfig, str | None]:
    """The card's default model, or the embedded one when the card's cannot be had (offline, not cached).

    Called once, before the run identity is taken, so the identity names the model that really runs.
    Returns the settled config and a note saying what was replaced (None when nothing was).
    """
    if config.model is None or not loads_weights(config.backend):
        return config, None
    model_args = config.backend_options.get("model_args") or {}
    try:
        resolve_model(config.model, revision=model_args.get("revision") if isinstance(model_args, dict) else None)
    except ModelUnavailable as exc:
        note = f"card model {config.model!r} unavailable ({exc}); running on {EMBEDDED_NAME}"
        log.warning("judge %s: %s", config.name, note)
        return config.with_overrides(model=EMBEDDED_NAME), note
    return config, None
