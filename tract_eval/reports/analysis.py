"""CoT analyses: the CoT distribution shift of the paper's Table 3 and the CoT perplexity of Appendix B.4."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Perplexity:
    texts: int
    tokens: int
    mean_nll: float  # per token, pooled over all texts
    perplexity: float  # exp(mean_nll)
    mean_text_perplexity: float  # mean over texts of each text's own perplexity

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def continuation_nll(backend, prompt: str, continuation: str) -> tuple[float, int]:
    """Summed negative log-likelihood of ``continuation`` after ``prompt`` and its token count.

    Tokenised the way score readouts are (prompt ids, then continuation ids), so the numbers describe
    exactly the text a RAIL read conditions on.
    """
    import torch

    model = getattr(backend, "model", None)
    if model is None or not hasattr(backend, "encode"):
        raise TypeError(f"perplexity needs a backend with local weights (transformers), not {backend.name!r}")
    prompt_ids, cot_ids = backend.encode(prompt), backend.encode(continuation)
    if not cot_ids:
        raise ValueError("cannot compute the perplexity of an empty CoT")
    ids = torch.tensor([prompt_ids + cot_ids], device=backend.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(cot_ids, device=backend.device)
    nll = -float(logprobs.gather(-1, target.unsqueeze(-1)).sum())
    return nll, len(cot_ids)


def perplexity(backend, pairs: list[tuple[str, str]], on_item=None) -> Perplexity:
    """Perplexity of each (prompt, CoT) pair's CoT under the backend's model."""
    total_nll, total_tokens, per_text = 0.0, 0, []
    for index, (prompt, cot) in enumerate(pairs):
        nll, tokens = continuation_nll(backend, prompt, cot)
        total_nll += nll
        total_tokens += tokens
        per_text.append(math.exp(nll / tokens))
        if on_item:
            on_item(index, nll, tokens)
    if not per_text:
        raise ValueError("no CoTs to score")
    mean_nll = total_nll / total_tokens
    return Perplexity(len(per_text), total_tokens, mean_nll, math.exp(mean_nll), sum(per_text) / len(per_text))
