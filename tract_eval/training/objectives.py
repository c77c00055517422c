"""Training objectives: CE over CoT + score, RAFT (no CoT) and CoT-RAFT, on one token layout.

Every training sequence is ``prompt + response``, the response ending ``... score token, EOS``:
``CoT + delimiter + " " + score`` for judges that write a CoT (score-only rows: the score alone), the
score token being the tokenizer-derived candidate of the gold score. What the ids are depends on the
layout (``training_template``, below): by default LLaMA-Factory's, as the reference trained, which is
not the ids its inference feeds (there the chat template renders ``[user, assistant: CoT]`` as one text,
e.g. Mistral's ``[INST] x [/INST]The ...`` against training's ``[INST] x[/INST]`` then `` The ...``).
The objectives differ only in which tokens the cross-entropy sees and in the weights:

* ``ce``        ce_weight * CE over CoT, bridge, score token and EOS (baselines B.1, B.2).
* ``raft``      the squared error of the expected score only (baseline B.4).
* ``cot_raft``  ce_weight * CE over CoT, bridge and EOS (the score token masked out, as in
  the reference) + lambda * (sum_y p(y | x, CoT) * y - y*)^2; ce_weight 0 is the RAFT loss on
  CoT data without CE (paper §6.3).

How a row becomes token ids (``training_template``) follows the reference's LLaMA-Factory template by
default (``encode_llama_factory_row``); ``encode_row`` lays it out on the judge's inference input instead.

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
# batch, like the CE term over its tokens. "reference": TRACT's compute_raft_loss on the released layout
# (one micro-batch of TrainConfig.reference_batch sequences per device): mse(mean over them) / their number,
# CE a token mean, the same under any split of that window into micro-batches (trainer.py).
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


# How training rows are laid out and tokenized (TrainConfig.training_template). The reference trains with
# LLaMA-Factory @ c6e3c14a (d223302/TRACT envs/train_requirements.txt), template ``mistral`` (Llama-3.1:
# ``llama3``), src/llamafactory/data/template.py: each message is formatted by the template's slots and
# encoded on its own (``_convert_elements_to_ids``: tokenizer.encode(slot, add_special_tokens=False), special
# tokens by id), the prompt = prefix + user turn, the response = assistant turn:
#   mistral  prompt [BOS] "[INST] {user}[/INST]"                                            response " {target}" [EOS]
#   llama3   prompt [BOS] "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
#                   "<|start_header_id|>assistant<|end_header_id|>\n\n"                   response "{target}" [EOS]
# where target is prepare_dataset.py's "<feedback> So the overall score is <n>" (score-only rows: "<n>").
# "chat-template": the judge's own inference input (the tokenizer's chat template) as the prompt, then the
# CoT, the bridge and the score token encoded apart. "auto": mistral on an [INST] chat template, llama3 on
# a Llama-3 one, else chat-template (a model the reference never trained).
LLAMA_FACTORY_TEMPLATES = {
    "mistral": {"user": "[INST] {content}[/INST]", "system": "{content}", "system_in_user": True,
                "assistant": " {content}"},
    "llama3": {"user": "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n",
               "system": "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>", "system_in_user": False,
               "assistant": "{content}"},
}
TRAINING_TEMPLATES = ("auto", "chat-template", *LLAMA_FACTORY_TEMPLATES)


def resolve_training_template(name: str, tokenizer) -> str:
    """The layout ``name`` stands for on this tokenizer (``auto``: by its chat template)."""
    if name not in TRAINING_TEMPLATES:
        raise ValueError(f"training_template must be one of {TRAINING_TEMPLATES}, not {name!r}")
    if name != "auto":
        return name
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else ""
    if "[INST]" in template:
        return "mistral"
    if "<|start_header_id|>" in template:
        return "llama3"
    return "chat-template"


def _check_row(tokenizer, score: int, candidates: ScoreCandidates, objective: str) -> None:
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


def _features(prompt_ids: list[int], response: list[int], score: int, objective: str) -> dict:
    """Labels for ``prompt + response`` whose response ends ``score token, EOS``: CE on the response
    (``ce``), on it without the score token (``cot_raft``, as custom_processor.py masks labels[-2]) or none."""
    if objective == "ce":
        response_labels = list(response)
    elif objective == "raft":
        response_labels = [IGNORE] * len(response)  # the score term alone trains RAFT
    else:
        response_labels = response[:-2] + [IGNORE, response[-1]]
    return {
        "input_ids": prompt_ids + response,
        "labels": [IGNORE] * len(prompt_ids) + response_labels,
        "score": float(score),
        "response_length": len(response),
    }


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_row(tokenizer, chat_text: str, cot: str, score: int, candidates: ScoreCandidates, objective: str,
               cut_marker: str | None = None) -> dict:
    """Layout ``chat-template``: token ids and CE labels of ``chat_text + CoT + bridge + score + EOS``.

    ``chat_text`` is the judge's inference input; the CoT is closed by the readout rule (``finish_cot``)
    and encoded apart from it, then the bridge and score ids the readout reads follow. This is not what
    the reference trains on (see ``encode_llama_factory_row``), nor exactly what its readout feeds, which
    encodes prompt and CoT as one text.
    """
    _check_row(tokenizer, score, candidates, objective)
    kept, forced, _ = finish_cot(cot, candidates.delimiter, cut_marker)
    cot_ids = _encode(tokenizer, kept + forced) + list(candidates.bridge_ids)
    score_id = candidates.sequences[candidates.scores.index(score)][0]
    return _features(_encode(tokenizer, chat_text), cot_ids + [score_id, tokenizer.eos_token_id], score, objective)


def encode_llama_factory_row(tokenizer, template: str, user: str, cot: str, score: int, candidates: ScoreCandidates,
                             objective: str, cut_marker: str | None = None, system: str | None = None) -> dict:
    """Layout ``mistral`` / ``llama3``: the row as LLaMA-Factory's template encodes it for the reference's
    training (see ``LLAMA_FACTORY_TEMPLATES``): prompt and response encoded apart, the target text
    ``"<CoT> So the overall score is <n>"`` (score-only rows: ``"<n>"``) in one piece, whose last token must
    be the score's candidate token (custom_processor.py looks labels[-2] up in its score-token table)."""
    _check_row(tokenizer, score, candidates, objective)
    slots = LLAMA_FACTORY_TEMPLATES[template]
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if system and slots["system_in_user"]:
        user, system = system + user, None  # Llama2Template: the system text opens the first user turn
    system_ids = _encode(tokenizer, slots["system"].format(content=system)) if system else []
    prompt_ids = prefix + system_ids + _encode(tokenizer, slots["user"].format(content=user))
    if cot:
        kept, forced, _ = finish_cot(cot, candidates.delimiter, cut_marker)
        target = f"{kept + forced} {score}"
    else:
        target = str(score)
    response = _encode(tokenizer, slots["assistant"].format(content=target))
    score_id = candidates.sequences[candidates.scores.index(score)][0]
    if not response or response[-1] != score_id:
        raise ValueError(f"LLaMA-Factory's {template} layout tokenizes the target's end {target[-30:]!r} as "
                         f"{response[-3:]}, not ending in the score token {score_id}; train with "
                         "training_template 'chat-template'")
    return _features(prompt_ids, response + [tokenizer.eos_token_id], score, objective)


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
