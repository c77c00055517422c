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


# Bytes per vocabulary entry that one row of a sampling step (the processors and sample_top_p) holds at
# its peak, beyond its input: 28 measured on typical rows, 105 on a row of equal scores, whose top-p
# bucket is the whole vocabulary. --batch-size auto counts this per slot; a test measures it.
PEAK_BYTES_PER_ENTRY = 112


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
    score, ties by id, so a row's draw never depends on the other rows. :func:`sample_top_p_sorted`
    is the definition (a full stable sort, float64 cumulative masses of ``exp(score - max)``).

    Here without a full-vocabulary sort: tokens are bucketed by the high bits of their order key
    (16384 buckets in score order), bucket masses are summed and searched, and only the buckets that
    hold the top-p boundary and the drawn position are sorted. Equal to the definition up to the
    order of float64 additions (relative 1e-16); a row where that order makes the two searches
    disagree is drawn by the definition itself.
    """
    import torch

    u = uniforms.unsqueeze(-1)
    if top_p >= 1.0:
        cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
        index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        return index.clamp(max=scores.shape[-1] - 1).squeeze(-1)
    keys, weights = _order_keys(scores), _weights(scores)
    buckets = ((_BUCKETS // 2 - 1) - (keys >> _SHIFT)).long()  # bucket 0 holds the highest scores
    through = torch.zeros((scores.shape[0], _BUCKETS), dtype=torch.float64, device=scores.device)
    through = through.scatter_add_(1, buckets, weights).cumsum_(dim=-1)  # mass of buckets 0..b
    bound = top_p * through[:, -1:]
    # the bucket where the mass reaches top_p: its tokens in order, and the last kept one
    edge = torch.searchsorted(through, bound).clamp(max=_BUCKETS - 1)
    edge_ids, edge_cdf, edge_count = _bucket_members(buckets, keys, weights, through, edge)
    last_kept = torch.searchsorted(edge_cdf, bound)
    kept_mass = edge_cdf.gather(-1, last_kept.clamp(max=edge_cdf.shape[-1] - 1))
    target = u.double() * kept_mass
    # the bucket and the token where the cumulative mass passes the target
    bucket = torch.searchsorted(through, target, right=True)
    ids, cdf, count = _bucket_members(buckets, keys, weights, through, bucket)
    limit = torch.where(bucket == edge, last_kept + 1, count)
    position = torch.searchsorted(cdf, target, right=True)
    chosen = ids.gather(-1, position.clamp(max=ids.shape[-1] - 1)).squeeze(-1)
    # float64 sums in another order than the definition's can leave a row undecided: draw it by definition
    undecided = ((last_kept >= edge_count) | (bucket > edge) | (position >= limit)).squeeze(-1)
    if bool(undecided.any()):
        rows = torch.nonzero(undecided).flatten()
        chosen[rows] = sample_top_p_sorted(scores[rows], uniforms[rows], top_p)
    return chosen


# buckets of the high 14 bits of the keys (sign, exponent, 5 mantissa bits: scores within ~3% of each
# other share one): few enough to sum and search per step at batch 128, fine enough that the buckets
# sorted hold hundreds of tokens even on a near-uniform row
_SHIFT = 18
_BUCKETS = 1 << (32 - _SHIFT)
_LAST = -(1 << 31)  # an int32 key below every score's (only NaN patterns reach it)


def _bucket_members(buckets, keys, weights, through, bucket):
    """Per row, the ids of the bucket ``bucket[row]`` in order (score descending, id ascending), padded
    to the largest such bucket of the batch; their cumulative masses (+inf on padding); their count."""
    import torch

    inside = buckets == bucket
    count = inside.sum(dim=-1, keepdim=True)
    width = max(1, int(count.max()))
    # nonzero lists each row's members in ascending id order; place them left-aligned, padding last
    rows, members = inside.nonzero(as_tuple=True)
    counts = count.squeeze(-1)
    column = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    vocab = keys.shape[-1]
    ids = torch.full((keys.shape[0], width), vocab - 1, dtype=torch.long, device=keys.device)
    ids[rows, column] = members
    valid = torch.arange(width, device=ids.device) < count
    ordered = torch.sort(torch.where(valid, keys.gather(-1, ids), _LAST), dim=-1, descending=True, stable=True)
    ids = ids.gather(-1, ordered.indices)
    start = torch.where(bucket > 0, through.gather(-1, (bucket - 1).clamp(min=0)), 0.0)
    cdf = start + (weights.gather(-1, ids) * valid).cumsum(dim=-1)
    return ids, torch.where(valid, cdf, float("inf")), count


def _order_keys(scores):
    """int32 keys in the scores' order (float32 bit patterns made monotone; -0.0 counts as +0.0)."""
    import torch

    bits = (scores.float() + 0.0).view(torch.int32)
    # negative patterns flip their 31 low bits (the sign stays): bits >> 31 is -1 for them, 0 otherwise;
    # the same keys as where(bits < 0, bits ^ 0x7FFFFFFF, bits), in a quarter of the time on CPU
    return bits ^ (bits >> 31).bitwise_and_(0x7FFFFFFF)


def _weights(scores):
    """Unnormalised probabilities exp(score - row max) (float32, as softmax computes them), in float64
    so that their sums barely depend on the order of addition."""
    import torch

    scores = scores.float()
    return torch.exp(scores - scores.max(dim=-1, keepdim=True).values).double()


def sample_top_p_sorted(scores, uniforms, top_p: float):
    """What :func:`sample_top_p` draws, by definition: a full stable sort (score descending, id
    ascending), float64 cumulative masses of ``exp(score - max)``, the top-p set (the tokens whose
    preceding mass is below ``top_p``; at least one) and the inverse CDF over it."""
    import torch

    keys = _order_keys(scores)
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices
    cdf = _weights(scores).gather(-1, order).cumsum(dim=-1)
    last_kept = torch.searchsorted(cdf, top_p * cdf[:, -1:]).clamp(max=scores.shape[-1] - 1)
    index = torch.searchsorted(cdf, uniforms.double().unsqueeze(-1) * cdf.gather(-1, last_kept), right=True)
    return order.gather(-1, torch.minimum(index, last_kept)).squeeze(-1)
