"""Batched sampling on the device, with one random stream per continuation.

Every continuation (a CoT) owns a stream seeded by ``stream_seed(seed, key, index)``. Draw ``t`` of
that stream is a counter-based uniform, ``uniform(stream seed, t)`` (SplitMix64 of the pair), so it
depends on nothing else: not on the batch, the slot, the order or the device. A step needs one
such uniform per row (a few floats to the device, no per-row host synchronisation); the token is
picked by inverse-CDF sampling over the processed distribution, on the device, for all rows at once.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def stream_uniforms(seeds: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Uniform in [0, 1) for draw ``draws[i]`` of the stream seeded ``seeds[i]`` (SplitMix64, wrapping
    uint64 arithmetic). 24 bits, so the value is exact in float32 and strictly below 1."""
    z = seeds.astype(np.uint64) + (draws.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def logits_processors(repetition_penalty: float, temperature: float):
    """Transformers' own processors for the penalty and the temperature (top-p is fused into the draw)."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature not in (0.0, 1.0):
        processors.append(TemperatureLogitsWarper(temperature))
    return processors


def sample_top_p(scores, uniforms, top_p: float):
    """One token per row by inverse-CDF sampling of ``softmax(scores)`` restricted to the top-p set.

    The top-p set is transformers' (``TopPLogitsWarper``): the most probable tokens, in order, while
    the mass before a token is below ``top_p`` (the top token always stays). Tokens are ordered by
    score, ties by id (a stable sort), so a row's draw never depends on the other rows.
    """
    import torch

    u = uniforms.unsqueeze(-1)
    if top_p >= 1.0:
        cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
        index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        return index.clamp(max=scores.shape[-1] - 1).squeeze(-1)
    ordered, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    probs = torch.softmax(ordered, dim=-1)
    cdf = probs.cumsum(dim=-1)
    kept = ((cdf - probs) < top_p).sum(dim=-1, keepdim=True).clamp(min=1)
    index = torch.searchsorted(cdf, u * cdf.gather(-1, kept - 1), right=True)
    index = torch.minimum(index, kept - 1)
    return order.gather(-1, index).squeeze(-1)
