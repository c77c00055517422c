"""Where the score is read: the score candidates' log-probabilities from a readout forward's last positions.

A readout runs one row per *variant* of a context: the context alone when every candidate is one
token, else the context plus the leading ids of each multi-token candidate, so one forward reads all
of a candidate's tokens. Rows are right-aligned, so the positions read are every row's last ones.
"""
from __future__ import annotations

from ...candidates import ScoreCandidates
from ...protocol import exclusive_sequence_logprobs


def candidate_variants(candidates: ScoreCandidates) -> list[tuple[int, ...]]:
    """The rows a readout runs per context: one per multi-token candidate (the context + its leading
    ids, so one forward reads all its tokens), or the context alone when every candidate is one token."""
    return [seq for seq in candidates.sequences if len(seq) > 1] or [()]


def candidate_totals(logprobs, variants: list[tuple[int, ...]], candidates: ScoreCandidates) -> dict[int, float]:
    """Candidate log-probs of one context from its rows' log-probs at their last ``keep`` positions
    (rows right-aligned, ``keep`` the longest variant): a multi-token candidate sums its tokens and
    gives up the mass of the longer candidates it prefixes (``exclusive_sequence_logprobs``)."""
    keep = logprobs.shape[1]
    totals: dict[int, float] = {}
    for score, seq in zip(candidates.scores, candidates.sequences):
        row = variants.index(seq) if len(seq) > 1 else 0
        first = keep - (len(variants[row]) or 1)  # the position that predicts the candidate's first id
        totals[score] = float(sum(logprobs[row, first + i, token] for i, token in enumerate(seq)))
    return totals if candidates.single_token else exclusive_sequence_logprobs(totals, candidates)
