"""Training objectives: CE over CoT + score, RAFT (no CoT) and CoT-RAFT, on one token layout.

Every training sequence is ``chat input + CoT + bridge + score token + EOS``,
where ``CoT`` ends with the delimiter for judges that write one (a score-only judge's rows have
no CoT: its chat input is stripped and the bridge and score follow at the first assistant token,
as its readout reads them) and the score token is the tokenizer-derived candidate of the gold
score. The objectives differ only in which tokens the cross-entropy sees and in the weights:

* ``ce``        ce_weight * CE over CoT, bridge, score token and EOS (baselines B.1, B.2).
* ``raft``      the squared error of the expected score only (baseline B.4).
* ``cot_raft``  ce_weight * CE over CoT, bridge and EOS (the score token masked out, as in
  the reference) + lambda * (sum_y p(y | x, CoT) * y - y*)^2; ce_weight 0 is the RAFT loss on
  CoT data without CE (paper §6.3).

The expected score reads the candidate logits at the single position that
predicts the score token. ``score_probs="raw"`` takes p(y) from a softmax over
the whole vocabulary at that one position, which is what the TRACT reference
trains (``softmax(logits)[..., score_ids]``, no renormalisation) and what the
paper's RAIL formula writes; ``"renormalized"`` softmaxes the candidate logits
only, like the harness's default RAIL readout at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..protocol import finish_cot
from ..candidates import ScoreCandidates

OBJECTIVES = ("ce", "raft", "cot_raft")
SCORE_PROBS = ("raw", "renormalized")
# How the squared-error term is normalised. "mean": over the sequences of the effective (accumulated)
# batch, like the CE term over its tokens. "reference": as TRACT's compute_raft_loss, mse(mean over the
# micro-batch) / micro-batch size per micro-batch, summed over the accumulation steps (with batch 1 and
# 8 steps: the sum of the 8 sequences' squared errors) while CE stays a token mean.
SCORE_REDUCTIONS = ("mean", "reference")
IGNORE = -100
SCORE_COLUMN = -2  # the score token's column after left padding: right before EOS


@dataclass
class LossTerms:
    """Sums and counts, so the caller can normalise over a whole accumulated batch."""

    ce_sum: torch.Tensor  # summed token cross-entropy
    ce_tokens: int  # tokens it was summed over
    se_sum: torch.Tensor  # summed squared error of the expected score
    sequences: int
    expected: torch.Tensor  # expected score per sequence (for logging)


def objective_weights(objective: str, score_weight: float, ce_weight: float = 1.0) -> tuple[float, float]:
    """(CE weight, score-term weight) of an objective; ``ce_weight`` 0 with ``cot_raft`` is the
    RAFT loss on CoT data without CE (paper §6.3)."""
    if objective == "ce":
        return ce_weight, 0.0
    if objective == "raft":
        return 0.0, score_weight
    if objective == "cot_raft":
        return ce_weight, score_weight
    raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")


def expected_score(score_logits: torch.Tensor, candidates: ScoreCandidates, score_probs: str = "raw") -> torch.Tensor:
    """sum_y p(y) * y from the logits [B, V] of the position that predicts the score token."""
    if not candidates.single_token:
        raise ValueError(
            f"the score term needs one token per score, but {candidates.delimiter!r} + scores "
            f"{candidates.scores} tokenize as {candidates.sequences}; train with objective 'ce'")
    ids = torch.tensor(candidates.first_token_ids, device=score_logits.device)
    values = torch.tensor(candidates.scores, device=score_logits.device, dtype=torch.float32)
    logits = score_logits.float()
    if score_probs == "raw":
        probs = torch.log_softmax(logits, dim=-1).index_select(-1, ids).exp()
    elif score_probs == "renormalized":
        probs = torch.softmax(logits.index_select(-1, ids), dim=-1)
    else:
        raise ValueError(f"score_probs must be one of {SCORE_PROBS}, not {score_probs!r}")
    return (probs * values).sum(-1)


def loss_terms(logits: torch.Tensor, labels: torch.Tensor, score_index: torch.Tensor, score_targets: torch.Tensor,
               candidates: ScoreCandidates, score_probs: str = "raw", with_score: bool = True) -> LossTerms:
    """The CE and score terms of a batch.

    ``logits`` [B, K, V] are the model's logits for K consecutive positions and
    ``labels`` [B, K] the token ids at those same positions (``-100`` where no
    CE applies); logits at k predict the token at k + 1. ``score_index`` [B]
    is the k whose logits predict the score token.
    """
    vocab = logits.shape[-1]
    next_labels = labels[:, 1:]
    ce_sum = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), next_labels.reshape(-1),
                             ignore_index=IGNORE, reduction="sum")
    ce_tokens = int((next_labels != IGNORE).sum())
    rows = torch.arange(logits.shape[0], device=logits.device)
    if with_score:
        expected = expected_score(logits[rows, score_index], candidates, score_probs)
        se_sum = ((expected - score_targets.float()) ** 2).sum()
    else:
        expected = torch.full_like(score_targets, float("nan"), dtype=torch.float32)
        se_sum = logits.new_zeros((), dtype=torch.float32)
    return LossTerms(ce_sum, ce_tokens, se_sum, int(logits.shape[0]), expected)


def encode_row(tokenizer, chat_text: str, cot: str, score: int, candidates: ScoreCandidates, objective: str,
               cut_marker: str | None = None) -> dict:
    """Token ids and CE labels of ``chat_text + CoT + bridge + score + EOS``.

    The CoT is closed and encoded exactly as the backends' readout after a
    supplied CoT does (``finish_cot``, prompt and CoT encoded separately), so
    training sees the ids inference feeds.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if score not in candidates.scores:
        raise ValueError(f"score {score} is outside the scale {candidates.scores[0]}..{candidates.scores[-1]}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end the training target with")
    if not candidates.single_token:
        raise ValueError(
            f"training needs one token per score, but {candidates.delimiter!r} + scores {candidates.scores} "
            f"tokenize as {candidates.sequences}")

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept, forced, _ = finish_cot(cot, candidates.delimiter, cut_marker)
    prompt_ids = encode(chat_text)
    cot_ids = encode(kept + forced) + list(candidates.bridge_ids)
    score_id = candidates.sequences[candidates.scores.index(score)][0]
    response = cot_ids + [score_id, tokenizer.eos_token_id]
    if objective == "ce":
        response_labels = list(response)
    elif objective == "raft":
        response_labels = [IGNORE] * len(response)  # the score term alone trains RAFT
    else:
        response_labels = cot_ids + [IGNORE, tokenizer.eos_token_id]
    input_ids = prompt_ids + response
    return {
        "input_ids": input_ids,
        "labels": [IGNORE] * len(prompt_ids) + response_labels,
        "score": float(score),
        "response_length": len(response),
    }


class LeftPadCollator:
    """Left-pads a batch so every row ends at the last column; only the response's logits are computed.

    The score token sits at column ``-2`` (before EOS) in every row (``SCORE_COLUMN``), and
    ``logits_to_keep`` asks the model for the response positions only, which
    skips the LM head over the (long) grading prompts.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        input_ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            input_ids.append([self.pad_token_id] * pad + list(f["input_ids"]))
            labels.append([IGNORE] * pad + list(f["labels"]))
            mask.append([0] * pad + [1] * len(f["input_ids"]))
        attention_mask = torch.tensor(mask)
        keep = max(f["response_length"] for f in features) + 1
        return {
            "input_ids": torch.tensor(input_ids),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "labels": torch.tensor(labels),
            "score_targets": torch.tensor([f["score"] for f in features], dtype=torch.float32),
            "logits_to_keep": keep,
        }
