"""CoT analyses: the CoT distribution shift of the paper's Table 3 and the CoT perplexity of Appendix B.4."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..records import Prediction


@dataclass
class Perplexity:
    texts: int
    tokens: int
    mean_nll: float  # per token, pooled over all texts
    perplexity: float  # exp(mean_nll)
    mean_text_perplexity: float  # mean over texts of each text's own perplexity

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def continuation_nlls(backend, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """Summed negative log-likelihood of each ``continuation`` after its ``prompt``, and its token count.

    Tokenised the way score readouts are (prompt ids, then continuation ids), so the numbers describe
    exactly the text a RAIL read conditions on. One backend call for all pairs (one engine call on
    vLLM, concurrent requests on a server).
    """
    if any(not backend.encode(continuation) for _, continuation in pairs):
        raise ConfigError("cannot compute the perplexity of an empty CoT")
    try:
        scored = backend.loglikelihood(list(pairs))
    except NotImplementedError as exc:
        raise ConfigError(f"perplexity: {exc}") from None
    return [(-logprob, tokens) for logprob, tokens, _ in scored]


def continuation_nll(backend, prompt: str, continuation: str) -> tuple[float, int]:
    """:func:`continuation_nlls` of one pair."""
    return continuation_nlls(backend, [(prompt, continuation)])[0]


def perplexity(backend, pairs: list[tuple[str, str]], on_item=None) -> Perplexity:
    """Perplexity of each (prompt, CoT) pair's CoT under the backend's model."""
    total_nll, total_tokens, per_text = 0.0, 0, []
    for index, (nll, tokens) in enumerate(continuation_nlls(backend, pairs) if pairs else []):
        total_nll += nll
        total_tokens += tokens
        per_text.append(math.exp(nll / tokens))
        if on_item:
            on_item(index, nll, tokens)
    if not per_text:
        raise ConfigError("no CoTs to score")
    mean_nll = total_nll / total_tokens
    return Perplexity(len(per_text), total_tokens, mean_nll, math.exp(mean_nll), sum(per_text) / len(per_text))


# -- CoT distribution shift (Table 3) --------------------------------------------------------

ANNOTATION_SUFFIX = " So the overall score is"  # the annotators' feedback stops before the score


@dataclass
class AnnotationCot:
    sample_id: str
    cot: str  # the annotation feedback (without the delimiter)
    gold: float  # the score the annotator gave after this feedback


def annotation_cots(bench) -> list[AnnotationCot]:
    """The (feedback, score) pairs stored with each row, in the fields the card's ``annotation_cots`` names
    (Prometheus files: ``gpt4_feedback`` + ``gpt4_score``)."""
    from ..benchmarks.base import read_json_rows

    if not bench.card.annotation_cots:
        raise ConfigError(f"{bench.name}: its card names no annotation_cots fields [feedback, score]; "
                          "pass --cots FILE")
    feedback_field, score_field = bench.card.annotation_cots
    if len(bench.located.paths) != 1:
        raise ConfigError(f"{bench.name}: annotation CoTs are read from a single local file "
                         f"(got {bench.located.source}); pass --data-dir")
    path = bench.located.paths[0]
    raw = read_json_rows(path)
    out = []
    for sample in bench.samples:
        number = sample.meta.get("row")
        row = raw[number - 1] if isinstance(number, int) and 0 < number <= len(raw) else None
        if row is None:
            raise ConfigError(f"{path}: sample {sample.id} has no source row number in its meta")
        feedback, scores = row.get(feedback_field), row.get(score_field)
        for name, value in ((feedback_field, feedback), (score_field, scores)):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{path}: row {number}: field {name!r} must be a non-empty list")
        if len(feedback) != len(scores):
            raise ConfigError(f"{path}: row {number}: {len(feedback)} {feedback_field} but {len(scores)} {score_field}")
        out += [AnnotationCot(sample.id, str(f).strip(), float(s)) for f, s in zip(feedback, scores)]
    return out


def read_annotation_file(path) -> list[AnnotationCot]:
    """JSONL rows ``{"id": sample id, "cot": text, "gold": score}``."""
    import json
    from pathlib import Path

    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number} is not valid JSON: {exc}") from exc
        for name in ("id", "cot", "gold"):
            if name not in row:
                raise ConfigError(f"{path}: line {number} has no field {name!r}")
        out.append(AnnotationCot(str(row["id"]), str(row["cot"]), float(row["gold"])))
    return out


@dataclass
class CotShift:
    rows: int  # (sample, annotation CoT) rows
    samples: int
    rmse_given: float  # score read after the annotation CoT vs the annotation's score
    rmse_own: float  # score after the model's own sampled CoT(s) vs the same annotation scores
    failed_own: int  # samples whose own-CoT prediction failed (left out of both RMSEs)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def cot_shift(judge, samples: list, annotations: list[AnnotationCot], on_row=None) -> tuple[CotShift, list[dict]]:
    """RMSE of RAIL scores conditioned on given annotation CoTs versus on the model's own CoTs."""
    import numpy as np

    by_sample: dict[str, list[AnnotationCot]] = {}
    for item in annotations:
        by_sample.setdefault(item.sample_id, []).append(item)
    samples = [s for s in samples if s.id in by_sample]
    if not samples:
        raise ConfigError("no sample has annotation CoTs")
    given_rows = judge.score_given_cots(
        samples, [[a.cot + ANNOTATION_SUFFIX for a in by_sample[s.id]] for s in samples], on_row=on_row)
    from ..runner import judge_pending

    own: dict[str, Prediction] = {}

    def keep(row: Prediction) -> None:
        own[row.id] = row
        if on_row:
            on_row(row)

    judge_pending(judge, samples, keep)  # the runner's loop and batch rule
    own_rows = [own[s.id] for s in samples]
    details, given_err, own_err, failed = [], [], [], 0
    for sample, given, own in zip(samples, given_rows, own_rows):
        if own.prediction is None:
            failed += 1
            continue
        for item, value in zip(by_sample[sample.id], given.per_cot):
            details.append({"id": sample.id, "gold": item.gold, "given_cot_prediction": value,
                            "own_cot_prediction": own.prediction, "own_cots": own.cots})
            given_err.append(value - item.gold)
            own_err.append(own.prediction - item.gold)
    rmse = lambda e: float(np.sqrt(np.mean(np.square(e)))) if e else float("nan")  # noqa: E731
    return CotShift(len(details), len(samples) - failed, rmse(given_err), rmse(own_err), failed), details


def own_cot_text(row: Prediction, index: int, delimiter: str) -> str:
    """The part of a stored CoT the model wrote: before any forced text and before the delimiter."""
    text, forced = row.cots[index], (row.forced or [""] * len(row.cots))[index]
    if forced:
        text = text[: text.rindex(forced)]
    elif delimiter in text:
        text = text[: text.rindex(delimiter)]
    return text.rstrip()
