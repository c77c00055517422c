"""Judge configuration: dataclasses filled from YAML judge cards and overridden by CLI flags."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .candidates import DEFAULT_DELIMITER
from .cards import card_names, find_card
from .errors import ConfigError, UnknownNameError


@dataclass
class SamplingConfig:
    """Paper defaults (TRACT §4): temperature 1.0, top-p 0.9, repetition penalty 1.03, 1024 new tokens."""

    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.03
    max_new_tokens: int = 1024

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class JudgeConfig:
    name: str
    description: str = ""
    judge_class: str = "absolute"  # registry key of the Judge implementation
    model: str | None = None  # HF id, local dir or .gguf; None = the embedded SmolLM2
    backend: str = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    template: str = "prometheus_absolute"
    system_prompt: str | None = None
    cot: bool = True  # does the judge write a CoT before its score?
    predictor: str = "rail"  # "rail" (expectation over candidates) or "decode" (parse the text)
    n_cot: int = 1
    scale: tuple[int, int] = (1, 5)
    delimiter: str = DEFAULT_DELIMITER
    # TRACT's fallback: cut the CoT at this marker when the full delimiter never appears.
    cut_marker: str = "So the overall"
    renormalize: bool = True  # RAIL over candidates renormalised (default) or raw as in the paper
    parse_failure_policy: str = "exclude"  # or "fallback"
    fallback_score: float | None = None
    batch_size: int = 8
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Prometheus-1 data files write 'Feedback: (write a feedback ...)' in the task text.
    feedback_label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.scale = tuple(int(v) for v in self.scale)  # YAML gives lists
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        if self.predictor not in ("rail", "decode"):
            raise ConfigError(f"judge {self.name!r}: predictor must be 'rail' or 'decode', not {self.predictor!r}")
        if self.parse_failure_policy not in ("exclude", "fallback"):
            raise ConfigError(f"judge {self.name!r}: parse_failure_policy must be 'exclude' or 'fallback'")
        if self.parse_failure_policy == "fallback" and self.fallback_score is None:
            raise ConfigError(f"judge {self.name!r}: parse_failure_policy 'fallback' needs fallback_score")
        if self.n_cot < 1:
            raise ConfigError(f"judge {self.name!r}: n_cot must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes predictions (not batch size or device)."""
        data = self.to_dict()
        for key in ("batch_size", "device", "description"):
            data.pop(key, None)
        # where the model name came from (card or --model) does not change predictions
        data["extra"] = {k: v for k, v in data["extra"].items() if k != "model_from_card"}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def with_overrides(self, **overrides) -> "JudgeConfig":
        """Return a copy with non-None overrides applied; ``sampling.*`` keys reach the sampling block."""
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            if key in data["sampling"]:
                data["sampling"][key] = value
            elif key in data:
                data[key] = value
            else:
                raise UnknownNameError(f"unknown judge setting {key!r}")
        return JudgeConfig(**data)


def read_yaml_mapping(path: Path, what: str = "judge card") -> dict:
    """A YAML file that must hold a mapping; errors name the file."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # one line: where, and what the parser expected
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping")
    return data


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
        return JudgeConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def builtin_judge_cards() -> list[str]:
    return card_names("judges")
