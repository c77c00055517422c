"""The TRACT readout protocol, once, for every backend and for training.

A CoT is finished by TRACT's rule (end at a stop string, always cut at the first cut marker, strip,
append " " + delimiter), the bridge tokens
shared by all score candidates follow, and the score distribution is read at the next position;
multi-token candidates (e.g. "10") are scored as sequences. Backends sample and return token
log-probabilities; these functions turn what they sampled into the exact readout context.
"""
from __future__ import annotations

import math
from typing import Callable

from .candidates import ScoreCandidates


# TRACT samples CoTs with these stop strings (inference.py); the sampler drops them from the CoT.
REFERENCE_STOP_STRINGS = ("[RESULT]", " [RESULT]")

# What the score is read after, once a CoT is finished:
#   reference  the reference's second pass: the prompt + the CoT stripped on both sides + the forced
#              delimiter, tokenized as one text (a single-pass backend reuses its cache up to the first
#              token where that tokenization departs from the sampled ids, and feeds the rest)
#   sampled    the sampled ids themselves (a named departure: keeps a CoT's leading whitespace and the
#              sampler's tokenization, so nothing is re-fed)
READOUTS = ("reference", "sampled")


def finish_cot(text: str, delimiter: str, cut_marker: str | None,
               stops: tuple[str, ...] | list[str] = ()) -> tuple[str, str, bool]:
    """TRACT's rule for turning a sampled CoT into the readout context (inference.py ``cot_splitter``).

    The CoT ends before its first stop string (the sampler stopped there), is **always** cut at its
    first ``cut_marker`` (or, without one, its first delimiter), stripped on the right, and
    ``" " + delimiter`` is appended. Returns
    ``(kept_text, forced_text, cut)``: ``kept_text`` is a prefix of ``text``; ``cut`` says it is
    shorter than ``text`` (whatever followed is dropped, i.e. masked by single-pass backends). When
    the model wrote exactly ``kept_text + " " + delimiter`` nothing is forced: ``(text, "", False)``.
    An empty delimiter (the score-only protocol) leaves the text as it is.
    """
    if not delimiter:
        return text, "", False
    end = min([text.index(stop) for stop in stops if stop and stop in text], default=len(text))
    kept = text[:end]
    marker = cut_marker or delimiter  # without a cut marker, a delimiter the model wrote still ends the CoT
    if marker in kept:
        kept = kept[: kept.index(marker)]
    kept = kept.rstrip()
    forced = " " + delimiter
    if text == kept + forced:
        return text, "", False
    return kept, forced, kept != text

def readout_text(kept_text: str, forced_text: str, readout: str = "reference") -> str:
    """The finished CoT as the score is read after it (``finish_cot``'s parts; see ``READOUTS``)."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, not {readout!r}")
    return (kept_text.lstrip() if readout == "reference" else kept_text) + forced_text


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def kept_prefix_length(decode: Callable[[list[int]], str], ids: list[int], kept_text: str) -> int:
    """The largest prefix of ``ids`` whose text is a prefix of ``kept_text`` (where a cut CoT ends)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept_text.startswith(decode(ids[:mid])):
            lo = mid
        else:
            hi = mid - 1
    return lo

def readout_after_sampled_ids(tokenizer, prompt_ids: list[int], ids: list[int], finish_reason: str,
                              stopped_at_delimiter: bool, candidates: ScoreCandidates,
                              cut_marker: str | None,
                              stops: tuple[str, ...] | list[str] = (),
                              readout: str = "reference") -> tuple[str, str, bool, list[int]]:
    """TRACT's cut/append rule on the ids an engine sampled (vLLM, offline or served).

    Returns ``(text, forced_text, cut, context_ids)``: the whole context to read the score after
    (prompt, finished CoT, forced delimiter, bridge; ``readout`` says how it is tokenized) and the
    text after the prompt.
    """
    decode = lambda tail: tokenizer.decode(tail, skip_special_tokens=False)  # noqa: E731
    encode = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    if finish_reason == "stop" and not stopped_at_delimiter and ids and ids[-1] in tokenizer.all_special_ids:
        ids = ids[:-1]  # the end-of-sequence token
    prompt_text = decode(prompt_ids)
    text_of = lambda tail: decode(prompt_ids + tail)[len(prompt_text):]  # noqa: E731
    generated_text = text_of(ids)
    delimiter = candidates.delimiter
    if stopped_at_delimiter:  # the stop can fall inside a token: keep the text up to the delimiter
        generated_text = generated_text[: generated_text.index(delimiter) + len(delimiter)]
    kept_text, forced_text, cut = finish_cot(generated_text, delimiter, cut_marker, stops)
    if readout == "reference":
        cot = readout_text(kept_text, forced_text, readout)
        context = encode(prompt_text + cot) + list(candidates.bridge_ids)
        return cot + candidates.bridge_text, forced_text, cut, context
    kept = kept_prefix_length(decode, ids, kept_text)
    forced_text = kept_text[len(text_of(ids[:kept])):] + forced_text  # a cut inside a token: force the rest
    readout_ids = ids[:kept] + (encode(forced_text) if forced_text else []) + list(candidates.bridge_ids)
    return text_of(readout_ids), forced_text, cut, list(prompt_ids) + readout_ids


def supplied_cot_context(encode: Callable[[str], list[int]], prompt: str, continuation: str,
                         candidates: ScoreCandidates, cut_marker: str | None,
                         stops: tuple[str, ...] | list[str] = (),
                         readout: str = "reference") -> tuple[str, str, bool, list[int]]:
    """The readout context after a supplied CoT (no sampling): ``(text after the prompt, forced_text,
    cut, context ids)``. ``reference`` tokenizes prompt and finished CoT as one text, as the
    reference's second pass does; ``sampled`` encodes them apart (nothing was sampled to reuse)."""
    kept, forced, cut = finish_cot(continuation, candidates.delimiter, cut_marker, stops)
    cot = readout_text(kept, forced, readout)
    if readout == "reference":
        ids = encode(prompt + cot)
    else:
        ids = encode(prompt) + (encode(cot) if cot else [])
    return cot + candidates.bridge_text, forced, cut, ids + list(candidates.bridge_ids)


def exclusive_sequence_logprobs(totals: dict[int, float], candidates: ScoreCandidates) -> dict[int, float]:
    """Multi-token candidates (e.g. "1" and "10"): log P(sequence) minus the mass of the longer
    candidates it prefixes, so that "1" means "1 and then not 0"."""
    adjusted = {}
    for score, seq in zip(candidates.scores, candidates.sequences):
        longer = [totals[s] for s, other in zip(candidates.scores, candidates.sequences)
                  if len(other) > len(seq) and other[: len(seq)] == seq]
        p = math.exp(totals[score]) - sum(math.exp(v) for v in longer)
        adjusted[score] = math.log(p) if p > 0 else float("-inf")
    return adjusted
