"""Training configuration: ``TrainingArguments`` plus the judge-training settings, filled from a YAML recipe.

A recipe (``training/<name>.yaml``) is a mapping of ``TrainConfig`` fields; it may
``extends:`` another recipe (same folder or a path) and override some of its
keys. Command-line flags override the recipe.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..cards import find_card
from ..judge_config import read_yaml_mapping
from ..errors import ConfigError
from .objectives import OBJECTIVES, SCORE_PROBS, SCORE_REDUCTIONS, TRAINING_TEMPLATES

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(TrainingArguments):
    """TrainingArguments with the judge-training settings (defaults = the TRACT paper's recipe)."""

    model: str | None = field(default=None, metadata={"help": "seed model; None = the embedded SmolLM2"})
    judge: str = field(default="tract", metadata={"help": "judge card whose system prompt, delimiter and scale the "
                                                          "training inputs use (the judge the model is trained for)"})
    train_file: str | None = field(default=None, metadata={"help": "prepared JSONL (tract-eval train prepare)"})
    objective: str = field(default="cot_raft", metadata={"help": f"one of {OBJECTIVES}"})
    score_weight: float = field(default=1.0, metadata={"help": "lambda: weight of the squared score error"})
    score_probs: str = field(default="raw", metadata={"help": f"one of {SCORE_PROBS}"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the CE term (0 with cot_raft: RAFT loss on "
                                                            "CoT data without CE, paper §6.3)"})
    score_reduction: str = field(default="reference", metadata={
        "help": f"one of {SCORE_REDUCTIONS}: 'reference' gives the loss TRACT's compute_raft_loss gives the "
                "released layout (reference_batch sequences per device in one micro-batch) under any split "
                "of per_device_train_batch_size x gradient_accumulation_steps into that many; 'mean' "
                "averages the score term per sequence of the accumulated batch"})
    reference_batch: int = field(default=8, metadata={
        "help": "sequences per device and optimizer step of the released LLaMA-Factory config whose score-term "
                "weight score_reduction 'reference' reproduces: 8 (cot_raft_mistral.yaml, 8 x 1); "
                "Llama-3.1 runs used 4 (cot_raft_llama.yaml, 4 x 1)"})
    training_template: str = field(default="auto", metadata={
        "help": f"one of {TRAINING_TEMPLATES}: how a row becomes token ids. 'auto': LLaMA-Factory's template for the "
                "tokenizer's family as the reference trained ('mistral' on an [INST] chat template, 'llama3' on a "
                "Llama-3 one), else 'chat-template' (the judge's inference input, then the CoT)"})
    validation_ratio: float = field(default=0.0, metadata={
        "help": "hold out this share of the rows (TRACT: 0.05) and evaluate the loss on it during training"})
    two_stage: bool = field(default=False, metadata={"help": "TRACT: stage 1, self-generated CoTs, stage 2"})
    save_merged: bool = field(default=False, metadata={"help": "one-stage runs: also write OUT/merged, the adapter "
                                                               "merged into the seed (a --model to train further)"})
    limit: int | None = field(default=None, metadata={"help": "train on the first N rows"})
    max_length: int = field(default=4096, metadata={"help": "longer rows are left out and reported"})
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"
    self_cot_max_new_tokens: int | None = field(
        default=None, metadata={"help": "CoT length for stage-2 data; None = the judge's sampling max_new_tokens"})
    self_cot_batch_size: int = 8
    # TrainingArguments defaults that differ for this use
    output_dir: str | None = "models/tract"
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float | None = 0.1
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 8  # the released layout (cot_raft_mistral.yaml): 8 x 1
    gradient_accumulation_steps: int = 1
    bf16: bool = True
    logging_steps: float = 10
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "none"  # the order TrainingArguments uses (HfArgumentParser reads it)
    remove_unused_columns: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.score_probs not in SCORE_PROBS:
            raise ConfigError(f"score_probs must be one of {SCORE_PROBS}, not {self.score_probs!r}")
        if self.score_weight < 0:
            raise ConfigError("score_weight (lambda) must be >= 0")
        if self.ce_weight < 0:
            raise ConfigError("ce_weight must be >= 0")
        if self.score_reduction not in SCORE_REDUCTIONS:
            raise ConfigError(f"score_reduction must be one of {SCORE_REDUCTIONS}, not {self.score_reduction!r}")
        if self.training_template not in TRAINING_TEMPLATES:
            raise ConfigError(f"training_template must be one of {TRAINING_TEMPLATES}, not {self.training_template!r}")
        self._check_reference_layout()
        if not 0 <= self.validation_ratio < 1:
            raise ConfigError(f"validation_ratio must be in [0, 1), not {self.validation_ratio}")
        if self.validation_ratio and self.eval_strategy in ("no", None):
            self.eval_strategy = "steps"  # the held-out loss is logged as eval_loss every eval_steps
        if self.validation_ratio:
            self.prediction_loss_only = True
        if self.bf16:
            self._choose_bf16_device()
        super().__post_init__()

    def _check_reference_layout(self) -> None:
        """``score_reduction: reference`` weighs the score term as the released layout did (mse mean over
        ``reference_batch`` sequences, divided by that size): only a window of that many sequences per device
        can give the same loss, so another size is refused rather than trained as a different objective."""
        if self.reference_batch < 1:
            raise ConfigError(f"reference_batch must be >= 1, not {self.reference_batch}")
        if self.score_reduction != "reference" or not self.score_weight or self.objective == "ce":
            return
        window = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if window != self.reference_batch:
            splits = ", ".join(f"{b} x {self.reference_batch // b}" for b in range(self.reference_batch, 0, -1)
                               if self.reference_batch % b == 0)
            raise ConfigError(
                f"score_reduction 'reference' reproduces the released layout, {self.reference_batch} sequences per "
                f"device per step (per_device_train_batch_size {self.reference_batch} x gradient_accumulation_steps "
                f"1; Mistral: cot_raft_mistral.yaml 8 x 1, Llama-3.1: cot_raft_llama.yaml 4 x 1), but "
                f"{self.per_device_train_batch_size} x {self.gradient_accumulation_steps} = {window}; use a split "
                f"of {self.reference_batch} ({splits}), set reference_batch, or score_reduction 'mean'")

    def _choose_bf16_device(self) -> None:
        """bf16 autocast on a GPU that has it, else on the CPU where oneDNN supports it, else float32 (said aloud)."""
        import torch

        if not self.use_cpu and torch.cuda.is_available():
            if torch.cuda.is_bf16_supported():
                return
            log.warning("this GPU has no bf16; training in float32")
            self.bf16 = False
            return
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            self.use_cpu = True  # TrainingArguments only allows bf16 without a GPU when told it is on the CPU
            return
        log.warning("this CPU has no bf16 support; training in float32")
        self.bf16 = False

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.init}


def recipe_path(name_or_path: str) -> Path:
    return find_card("training", name_or_path, "training recipe")


def load_recipe(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe's settings with its ``extends:`` chain resolved (later files win)."""
    path = recipe_path(name_or_path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    data = read_yaml_mapping(path, "training recipe")
    parent = data.pop("extends", None)
    if parent:
        parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
        base = load_recipe(str(parent_path if parent_path.exists() else parent), _seen + (path,))
        data = {**base, **data}
    unknown = set(data) - TrainConfig.field_names()
    if unknown:
        raise ConfigError(f"{path}: unknown training settings {sorted(unknown)}; see TrainConfig in "
                         f"tract_eval/training/config.py")
    return data


def build_config(recipe: str | None, overrides: dict | None = None) -> TrainConfig:
    """Recipe settings, then ``overrides`` (CLI flags; None values are ignored)."""
    data = load_recipe(recipe) if recipe else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in TrainConfig.field_names():
            raise ConfigError(f"unknown training setting {key!r}")
        data[key] = value
    try:
        return TrainConfig(**data)
    except (TypeError, ValueError) as exc:
        where = f"recipe {recipe}" if recipe else "training settings"
        raise ConfigError(f"{where}: {exc}") from exc


def config_dict(config: TrainConfig) -> dict:
    """The settings that define a run (for summaries), JSON-ready."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
