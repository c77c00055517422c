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
from .cards import card_dir, find_card
from .protocol import REFERENCE_STOP_STRINGS

PROTOCOLS = ("cot-rail", "cot-decode", "score-only-rail", "score-only-decode", "prometheus")


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
    # How the judge reads a score (see README "Judges"; tract_eval.judges.variants):
    #   cot-rail           CoT, then the expected score over the candidates after the delimiter (TRACT)
    #   cot-decode         CoT, then one score token sampled after the delimiter (CE with CoT)
    #   score-only-rail    score-only prompt, expected score at the first assistant token (RAIL, RAFT)
    #   score-only-decode  score-only prompt, one score token sampled there (CE without CoT)
    #   prometheus         prometheus-eval: free generation parsed after [RESULT], regenerated if unparsable
    protocol: str = "cot-rail"
    n_cot: int = 1
    scale: tuple[int, int] = (1, 5)
    delimiter: str = DEFAULT_DELIMITER
    # TRACT cuts every CoT at the first occurrence of this marker, then appends " " + delimiter.
    cut_marker: str = "So the overall"
    # CoTs stop at these strings (TRACT: [RESULT] and " [RESULT]") besides the delimiter
    stop: tuple[str, ...] = REFERENCE_STOP_STRINGS
    # prometheus: unparsable outputs are regenerated up to this many times (prometheus-eval: 5)
    max_retries: int = 5
    # RAIL over the raw full-vocabulary probabilities of the candidates, as the reference (default),
    # or renormalised over the candidates (a named departure: --renormalize)
    renormalize: bool = False
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
        self.stop = tuple(self.stop)
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"judge {self.name!r}: protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.protocol.startswith("score-only") and self.n_cot != 1:
            raise ValueError(f"judge {self.name!r}: a score-only judge reads one score per sample; n_cot must be 1")
        if self.max_retries < 0:
            raise ValueError(f"judge {self.name!r}: max_retries must be >= 0")
        if self.parse_failure_policy not in ("exclude", "fallback"):
            raise ValueError(f"judge {self.name!r}: parse_failure_policy must be 'exclude' or 'fallback'")
        if self.parse_failure_policy == "fallback" and self.fallback_score is None:
            raise ValueError(f"judge {self.name!r}: parse_failure_policy 'fallback' needs fallback_score")
        if self.n_cot < 1:
            raise ValueError(f"judge {self.name!r}: n_cot must be >= 1")

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
                raise KeyError(f"unknown judge setting {key!r}")
        return JudgeConfig(**data)


def read_yaml_mapping(path: Path, what: str = "judge card") -> dict:
    """A YAML file that must hold a mapping; errors name the file."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} must be a mapping")
    return data


def load_judge_card(name_or_path: str) -> JudgeConfig:
    """A built-in card name (``judges/<name>.yaml``) or a path to a YAML card."""
    path = find_card("judges", name_or_path, "judge card")
    data = read_yaml_mapping(path)
    data.setdefault("name", path.stem)
    known = {f.name for f in dataclasses.fields(JudgeConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown judge settings {sorted(unknown)}; known: {sorted(known)}")
    try:
        return JudgeConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def builtin_judge_cards() -> list[str]:
    return sorted(p.stem for p in card_dir("judges").glob("*.yaml"))
