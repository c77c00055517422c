"""``ScoreTrainer`` (transformers' Trainer with the CE / RAFT / CoT-RAFT loss) and LoRA model handling."""
from __future__ import annotations

import copy
import json
import logging
from functools import lru_cache
from pathlib import Path

import torch
from transformers import Trainer

from ..candidates import ScoreCandidates
from ..models import EMBEDDED_NAME, ModelSource, resolve_model
from .objectives import SCORE_COLUMN, SCORE_REDUCTIONS, loss_terms, objective_weights

log = logging.getLogger(__name__)


class ScoreTrainer(Trainer):
    """Trainer whose loss is ``ce_weight * CE + score_weight * (E[score] - y*)^2``.

    ``score_reduction="mean"``: CE is normalised over the whole accumulated batch (per target token,
    across processes) and the score term per sequence, so gradient accumulation gives the same update
    as one big batch. ``"reference"``: the loss TRACT's compute_raft_loss gives the released layout
    (one micro-batch of ``reference_batch`` sequences per device, no accumulation): per process, CE over
    the accumulation window's target tokens + ``sum of squared errors / window sequences**2`` (mse mean
    over the batch, divided by its size), so any split of the window (8 x 1, 4 x 2, 1 x 8) gives that
    same loss; TrainConfig refuses windows of another size. The terms are logged separately as
    ``ce_loss`` and ``score_loss`` (plus ``expected_score_mae``).
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, candidates: ScoreCandidates, objective: str, score_weight: float = 1.0,
                 score_probs: str = "raw", ce_weight: float = 1.0, score_reduction: str = "mean", **kwargs):
        super().__init__(*args, **kwargs)
        if score_reduction not in SCORE_REDUCTIONS:
            raise ValueError(f"score_reduction must be one of {SCORE_REDUCTIONS}, not {score_reduction!r}")
        self.candidates = candidates
        self.objective = objective
        self.ce_weight, self.score_weight = objective_weights(objective, score_weight, ce_weight)
        self.score_probs = score_probs
        self.score_reduction = score_reduction
        self._window: tuple[int, int] | None = None  # (CE tokens, sequences) of the accumulated batch, all processes
        self._local_window: tuple[int, int] | None = None  # the same on this process alone
        self._reset_term_log()

    def _reset_term_log(self) -> None:
        self._term_log = {"ce_sum": 0.0, "ce_tokens": 0, "se_sum": 0.0, "ae_sum": 0.0, "sequences": 0}

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch_samples)
        sequences = sum(len(b["labels"]) for b in batch_samples)
        self._local_window = (tokens, sequences)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(torch.tensor([tokens, sequences], device=device).unsqueeze(0))
            tokens, sequences = (int(v) for v in counts.sum(0))
        self._window = (tokens, sequences)
        return batch_samples, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        score_targets = inputs.pop("score_targets")
        keep = int(inputs.pop("logits_to_keep"))
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits
        score_index = torch.full((logits.shape[0],), keep + SCORE_COLUMN - 1, device=logits.device)
        terms = loss_terms(logits, labels[:, -keep:], score_index, score_targets, self.candidates,
                           self.score_probs, with_score=True)
        if self.score_reduction == "reference":
            loss = self._reference_loss(terms, logits, model.training)
        else:
            loss = self._mean_loss(terms, logits, model.training)
        if model.training:
            self._term_log["ce_sum"] += float(terms.ce_sum.detach())
            self._term_log["ce_tokens"] += terms.ce_tokens
            self._term_log["se_sum"] += float(terms.se_sum.detach())
            self._term_log["ae_sum"] += float((terms.expected.detach() - score_targets).abs().sum())
            self._term_log["sequences"] += terms.sequences
        return (loss, outputs) if return_outputs else loss

    def _mean_loss(self, terms, logits, training: bool) -> torch.Tensor:
        """Both terms normalised over the accumulated batch of all processes (one big batch's loss)."""
        if training and self._window is not None:
            ce_norm, seq_norm = self._window
            scale = self.accelerator.num_processes  # DDP averages gradients over processes
        else:
            ce_norm, seq_norm, scale = terms.ce_tokens, terms.sequences, 1
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * terms.ce_sum / max(ce_norm, 1)
        if self.score_weight:
            loss = loss + self.score_weight * terms.se_sum / max(seq_norm, 1)
        return loss * scale

    def _reference_loss(self, terms, logits, training: bool) -> torch.Tensor:
        """compute_raft_loss on this process's whole window, as if it were one micro-batch (the released
        layout): lm = CE_sum / window tokens (score tokens masked); score = mse mean / window size. Each
        process normalises its own window and DDP averages them, as the reference's processes did."""
        if training and self._local_window is not None:
            ce_norm, seq_norm = self._local_window
        else:
            ce_norm, seq_norm = terms.ce_tokens, terms.sequences
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * terms.ce_sum / max(ce_norm, 1)
        if self.score_weight:
            loss = loss + self.score_weight * terms.se_sum / max(seq_norm, 1) ** 2
        return loss

    def log(self, logs, start_time=None):
        seen = self._term_log
        if "loss" in logs and seen["sequences"]:
            if seen["ce_tokens"]:
                logs["ce_loss"] = round(seen["ce_sum"] / seen["ce_tokens"], 6)
            logs["score_loss"] = round(seen["se_sum"] / seen["sequences"], 6)
            logs["expected_score_mae"] = round(seen["ae_sum"] / seen["sequences"], 6)
            self._reset_term_log()
        super().log(logs, start_time)


# -- models --------------------------------------------------------------------------------------------------------

def base_model_reference(source: ModelSource) -> str:
    """How an adapter's ``base_model_name_or_path`` names its base so that ``resolve_model`` finds it again."""
    if source.adapter:
        raise ValueError(f"{source.spec} is itself a LoRA adapter; merge it into a model folder to train from it")
    if source.spec == EMBEDDED_NAME:
        return EMBEDDED_NAME
    if source.gguf_file:
        return str((Path(source.path) / source.gguf_file).resolve())
    return str(Path(source.path).resolve()) if source.is_local else source.path


@lru_cache(maxsize=2)
def _load_base(spec: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..conversion import loadable_source

    source = resolve_model(spec)
    files = loadable_source(source)  # a GGUF: its cached float32 conversion, the same weights
    kwargs = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(files.path, **kwargs)
    # a GGUF is dequantised to float32 weights; bf16 training runs under autocast
    model = AutoModelForCausalLM.from_pretrained(files.path, dtype=torch.float32, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and files.gguf_file:
        # transformers unpacked the GGUF blocks into ordinary float weights but still marks the model as
        # quantized, which Trainer refuses to train and save_pretrained refuses to write; drop the mark
        if not all(p.is_floating_point() for p in model.parameters()):
            raise ValueError(f"{source.spec}: transformers kept GGUF-packed weights; cannot train on them")
        quantizer.remove_quantization_config(model)
    return source, tokenizer, model


def load_seed(spec: str | None):
    """(source, tokenizer, model): a fresh copy of the seed model, loaded once per process."""
    source, tokenizer, model = _load_base(spec)
    base_model_reference(source)  # fail early for adapters
    return source, copy.deepcopy(tokenizer), copy.deepcopy(model)


def add_lora(model, rank: int, alpha: int, dropout: float, target: str):
    from peft import LoraConfig, get_peft_model

    targets = target if target == "all-linear" else [t.strip() for t in target.split(",")]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_adapter(peft_model, out_dir: str | Path, source: ModelSource) -> Path:
    """Write the adapter with a base reference ``resolve_model`` understands (usable as ``--model``)."""
    out = Path(out_dir)
    peft_model.peft_config["default"].base_model_name_or_path = base_model_reference(source)
    peft_model.save_pretrained(str(out))
    written = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    if resolve_model(str(out)).adapter is None or written != base_model_reference(source):
        raise RuntimeError(f"{out}: adapter_config.json does not name the base model {base_model_reference(source)}")
    return out


def save_merged(peft_model, tokenizer, out_dir: str | Path) -> Path:
    """The adapter folded into a copy of the base weights: a plain model folder (fast to load for generation)."""
    out = Path(out_dir)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
