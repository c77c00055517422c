"""Score candidates derived from a tokenizer: which tokens spell each score after the delimiter.

Nothing here knows token ids in advance. For a delimiter ``D`` and scores
``1..K`` we tokenize ``D + sep + str(k)`` and keep what follows ``D``'s own
tokens. Tokens shared by every candidate (e.g. a lone space token, as in
SmolLM2 and Llama/Mistral tokenizers) form the *bridge*: they are fed after the
delimiter before the score distribution is read. If each candidate is then a
single token, one next-token distribution gives all scores; otherwise each
candidate is a token sequence and is scored as one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DELIMITER = "So the overall score is"

# Log-probabilities are at most 0 and the candidates' probabilities add up to at most 1; a readout
# beyond these bounds by more than rounding (float16/bfloat16 softmaxes, a server's JSON) is impossible.
LOGPROB_TOLERANCE = 1e-3


def impossible_logprobs(logprobs: dict) -> str | None:
    """Why a candidate readout ``{score: log-probability}`` cannot be a distribution, quoting its values;
    None when it can (log-probabilities <= 0, none NaN, total probability <= 1, all up to rounding)."""
    import math

    values = list(logprobs.values())
    quoted = "{" + ", ".join(f"{k}: {v!r}" for k, v in logprobs.items()) + "}"
    if any(not isinstance(v, (int, float)) or math.isnan(v) for v in values):
        return f"log-probabilities that are not numbers: {quoted}"
    if any(v > LOGPROB_TOLERANCE for v in values):
        return f"log-probabilities above 0: {quoted}"
    mass = sum(math.exp(v) for v in values)
    if mass > 1 + LOGPROB_TOLERANCE:
        return f"candidate probabilities adding up to {mass:.4g} > 1: {quoted}"
    return None


@dataclass(frozen=True)
class ScoreCandidates:
    delimiter: str
    scores: tuple[int, ...]
    delimiter_ids: tuple[int, ...]
    bridge_ids: tuple[int, ...]
    bridge_text: str
    # one token-id sequence per score, after delimiter + bridge
    sequences: tuple[tuple[int, ...], ...]
    separator: str = " "
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def single_token(self) -> bool:
        return all(len(seq) == 1 for seq in self.sequences)

    @property
    def first_token_ids(self) -> list[int]:
        return [seq[0] for seq in self.sequences]

    def to_dict(self) -> dict:
        return {
            "delimiter": self.delimiter,
            "separator": self.separator,
            "scores": list(self.scores),
            "delimiter_ids": list(self.delimiter_ids),
            "bridge_ids": list(self.bridge_ids),
            "bridge_text": self.bridge_text,
            "sequences": [list(s) for s in self.sequences],
            "single_token": self.single_token,
        }


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _score_suffixes(tokenizer, context: str, scale: tuple[int, int], separator: str,
                    what: str) -> tuple[tuple[int, ...], list[int], list[list[int]]]:
    """(scores, context ids, per score the ids that ``separator + score`` adds after ``context``)."""
    low, high = scale
    if low > high:
        raise ValueError(f"score scale {scale} is empty")
    scores = tuple(range(low, high + 1))
    context_ids = _encode(tokenizer, context)
    suffixes: list[list[int]] = []
    for score in scores:
        ids = _encode(tokenizer, f"{context}{separator}{score}")
        if ids[: len(context_ids)] != context_ids:
            raise ValueError(
                f"tokenizer merges {what} {context[-40:]!r} with the score {score}: "
                f"{context_ids[-8:]} is not a prefix of {ids[-12:]}; choose another delimiter or separator"
            )
        suffix = ids[len(context_ids):]
        if not suffix:
            raise ValueError(f"score {score} produced no tokens after {what}")
        suffixes.append(suffix)
    return scores, context_ids, suffixes


def _split_bridge(suffixes: list[list[int]]) -> tuple[list[int], tuple[tuple[int, ...], ...]]:
    """Tokens shared by every candidate (keeping at least one token per candidate) and the rest."""
    bridge: list[int] = []
    for position in range(min(len(s) for s in suffixes)):
        column = {s[position] for s in suffixes}
        if len(column) == 1 and all(len(s) > position + 1 for s in suffixes):
            bridge.append(suffixes[0][position])
        else:
            break
    sequences = tuple(tuple(s[len(bridge):]) for s in suffixes)
    if len(set(sequences)) != len(sequences):
        raise ValueError(f"two scores share the same tokens: {sequences}")
    return bridge, sequences


def derive_score_candidates(
    tokenizer,
    delimiter: str = DEFAULT_DELIMITER,
    scale: tuple[int, int] = (1, 5),
    separator: str = " ",
) -> ScoreCandidates:
    """Candidates read after ``delimiter`` (TRACT: ``... So the overall score is`` + bridge)."""
    scores, delimiter_ids, suffixes = _score_suffixes(tokenizer, delimiter, scale, separator, "the delimiter")
    bridge, sequences = _split_bridge(suffixes)
    bridge_text = tokenizer.decode(delimiter_ids + bridge)[len(tokenizer.decode(delimiter_ids)):]
    return ScoreCandidates(
        delimiter=delimiter,
        scores=scores,
        delimiter_ids=tuple(delimiter_ids),
        bridge_ids=tuple(bridge),
        bridge_text=bridge_text,
        sequences=sequences,
        separator=separator,
    )


def derive_first_token_candidates(
    tokenizer,
    anchor: str,
    scale: tuple[int, int] = (1, 5),
    separator: str = " ",
) -> ScoreCandidates:
    """Candidates read at the first assistant token (TRACT's score-only protocol).

    ``anchor`` is a rendered prompt with the assistant turn opened and stripped on the right; the
    reference reads the score after ``anchor + " "``. The delimiter is empty: nothing is forced,
    the bridge (e.g. a lone space token) follows the prompt directly.
    """
    scores, anchor_ids, suffixes = _score_suffixes(tokenizer, anchor, scale, separator, "the prompt's end")
    bridge, sequences = _split_bridge(suffixes)
    bridge_text = tokenizer.decode(anchor_ids + bridge)[len(tokenizer.decode(anchor_ids)):]
    return ScoreCandidates(
        delimiter="",
        scores=scores,
        delimiter_ids=(),
        bridge_ids=tuple(bridge),
        bridge_text=bridge_text,
        sequences=sequences,
        separator=separator,
    )
