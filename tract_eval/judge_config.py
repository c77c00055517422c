"""Judge configuration: dataclasses filled from YAML judge cards and overridden by CLI flags.

Every field is type-checked on construction (a card's ``cot: "no"`` is an error, not "true"). Which
settings can change a judge's scores its protocol declares (``JudgeVariant.score_settings``); the
run identity (``tract_eval.identity``) is built from that. Cards are read by ``judges.cards``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .candidates import DEFAULT_DELIMITER
from .errors import ConfigError, UnknownNameError
from .protocol import READOUTS, REFERENCE_STOP_STRINGS

# Where score-only judges read: "reference" renders the user turn and an empty assistant turn as the
# reference code did (transformers 4.47 keeps that turn closed on ChatML / Llama-3 templates), strips
# it and reads after " "; "generation-prompt" reads after the opened assistant turn instead.
SCORE_ONLY_ANCHORS = ("reference", "generation-prompt")
# How prometheus judges parse (and regenerate) verdicts: "reference" as prometheus-eval's eval/
# code (exactly one [RESULT], then only the score); "library" as prometheus-eval's library parser
# (prometheus_eval/parser.py, what single_absolute_grade users get); "lenient" with
# tract_eval.parse_score's shapes (tract-eval's own).
VERDICT_PARSERS = ("reference", "library", "lenient")
# A row of several runs (n_cot) some of which stay unscored: "mean" scores it with the mean of the scored
# runs (TRACT averages the CoTs it can read); "fail-row" leaves it unscored (prometheus-eval's
# eval/run_evaluate.py raises when an output stays unparsable after its retries, so no row of its
# output has fewer than all runs: calculate_results means all of them).
UNPARSED_RUNS = ("mean", "fail-row")
# Every score of a scale is a candidate the judge reads a probability for (and tokenizes up front): a
# scale is bounded so that a typo like 0-1000000 is refused at once instead of running for minutes
MAX_SCALE_POINTS = 101  # e.g. 0-100


@dataclass
class SamplingConfig:
    """Paper defaults (TRACT §4): temperature 1.0, top-p 0.9, repetition penalty 1.03, 1024 new tokens."""

    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.03
    max_new_tokens: int = 1024

    def __post_init__(self):
        check_field_types(self, "sampling")
        problems = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be >= 0, not {self.temperature}")
        if not (0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], not {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if problems:
            raise ConfigError("sampling: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _type_ok(value: Any, hint: Any) -> bool:
    """Does ``value`` fit the annotation ``hint``? ints are floats, but bools are neither."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]
            return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_type_ok(v, h) for v, h in zip(value, args)))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # annotations we do not check (nested dataclasses are checked by their own __post_init__)


def check_field_types(obj: Any, where: str) -> None:
    """Raise a ValueError naming every field of the dataclass ``obj`` whose value has the wrong type."""
    hints = typing.get_type_hints(type(obj))
    wrong = [f"{f.name} must be {_describe_hint(hints[f.name])}, not {getattr(obj, f.name)!r}"
             for f in dataclasses.fields(obj)
             if f.name in hints and not _type_ok(getattr(obj, f.name), hints[f.name])]
    if wrong:
        raise ConfigError(f"{where}: " + "; ".join(wrong))


def _describe_hint(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


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
    # How the judge reads a score: a type in tract_eval.judges.variants (docs/reference/protocols.md),
    # which checks the name
    #   cot-rail           CoT, then the expected score over the candidates after the delimiter (TRACT)
    #   cot-decode         CoT, then one score token sampled after the delimiter (CE with CoT)
    #   score-only-rail    score-only prompt, expected score at the first assistant token (RAIL, RAFT)
    #   score-only-decode  score-only prompt, one score token sampled there (CE without CoT)
    #   prometheus         prometheus-eval: free generation parsed after [RESULT], regenerated if unparsable
    protocol: str = "cot-rail"
    n_cot: int = 1  # CoTs per sample (score-only protocols read one score and ignore it)
    scale: tuple[int, int] = (1, 5)
    delimiter: str = DEFAULT_DELIMITER
    # TRACT cuts every CoT at the first occurrence of this marker, then appends " " + delimiter.
    cut_marker: str = "So the overall"
    # CoTs stop at these strings (TRACT: [RESULT] and " [RESULT]") besides the delimiter
    stop: tuple[str, ...] = REFERENCE_STOP_STRINGS
    # cot protocols: how the finished CoT is tokenized for the readout (protocol.READOUTS)
    readout: str = "reference"
    score_only_anchor: str = "reference"  # score-only protocols: SCORE_ONLY_ANCHORS
    # prometheus: unparsable outputs are regenerated up to this many times (prometheus-eval: 5)
    max_retries: int = 5
    verdict_parser: str = "reference"  # prometheus: VERDICT_PARSERS
    unparsed_runs: str = "mean"  # UNPARSED_RUNS: a row whose runs are not all scored
    # RAIL over the raw full-vocabulary probabilities of the candidates, as the reference (default),
    # or renormalised over the candidates (a named departure: --renormalize)
    renormalize: bool = False
    parse_failure_policy: str = "exclude"  # or "fallback"
    # a top-k readout (OpenAI-compatible servers) that omits score candidates: "fail" counts that CoT
    # as unparsed; "renormalize" scores it over the candidates present. The row's status is
    # ``partial_candidates`` either way, and the missing candidates are recorded.
    partial_candidates: str = "fail"
    fallback_score: float | None = None
    batch_size: int | str = 8  # sequences decoding at once; "auto": the most that fit (CUDA)
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Prometheus-1 data files write 'Feedback: (write a feedback ...)' in the task text.
    feedback_label: str | None = None
    # backend constructor options (e.g. base_url, mode); each backend declares which of them can
    # change a score (backends.declaration)
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.sampling, dict):
            unknown = set(self.sampling) - {f.name for f in dataclasses.fields(SamplingConfig)}
            if unknown:
                raise ConfigError(f"judge {self.name!r}: unknown sampling settings {sorted(unknown)}")
            try:
                self.sampling = SamplingConfig(**self.sampling)
            except ValueError as exc:
                raise ConfigError(f"judge {self.name!r}: {exc}") from None
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError(f"judge {self.name!r}: sampling must be a mapping, not {self.sampling!r}")
        check_field_types(self, f"judge {self.name!r}")
        self.scale = tuple(self.scale)  # YAML gives lists
        self.stop = tuple(self.stop)
        if self.scale[0] >= self.scale[1]:
            raise ConfigError(f"judge {self.name!r}: scale must be (low, high) with low < high, not {list(self.scale)}")
        if self.scale[1] - self.scale[0] + 1 > MAX_SCALE_POINTS:
            raise ConfigError(f"judge {self.name!r}: scale {list(self.scale)} has {self.scale[1] - self.scale[0] + 1} "
                              f"points; at most {MAX_SCALE_POINTS}")
        if not self.delimiter:
            raise ConfigError(f"judge {self.name!r}: delimiter must not be empty")
        if self.batch_size != "auto" and (isinstance(self.batch_size, str) or self.batch_size < 1):
            raise ConfigError(f"judge {self.name!r}: batch_size must be >= 1 or 'auto', not {self.batch_size!r}")
        for name, allowed in (("readout", READOUTS), ("score_only_anchor", SCORE_ONLY_ANCHORS),
                              ("verdict_parser", VERDICT_PARSERS), ("unparsed_runs", UNPARSED_RUNS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"judge {self.name!r}: {name} must be one of {', '.join(allowed)}, "
                                  f"not {getattr(self, name)!r}")
        if self.max_retries < 0:
            raise ConfigError(f"judge {self.name!r}: max_retries must be >= 0, not {self.max_retries}")
        if self.parse_failure_policy not in ("exclude", "fallback"):
            raise ConfigError(f"judge {self.name!r}: parse_failure_policy must be 'exclude' or 'fallback'")
        if self.partial_candidates not in ("fail", "renormalize"):
            raise ConfigError(f"judge {self.name!r}: partial_candidates must be 'fail' or 'renormalize', "
                             f"not {self.partial_candidates!r}")
        if self.parse_failure_policy == "fallback" and self.fallback_score is None:
            raise ConfigError(f"judge {self.name!r}: parse_failure_policy 'fallback' needs fallback_score")
        if self.n_cot < 1:
            raise ConfigError(f"judge {self.name!r}: n_cot must be >= 1, not {self.n_cot}")
        if self.fallback_score is not None and not self.scale[0] <= self.fallback_score <= self.scale[1]:
            raise ConfigError(f"judge {self.name!r}: fallback_score {self.fallback_score} is outside the scale "
                             f"{list(self.scale)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
