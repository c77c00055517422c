"""Training data: (grading prompt, CoT ending in the delimiter, integer score) rows, as TRACT formats them.

TRACT rewrites an annotation ``"<feedback> [RESULT] <n>"`` as the CoT
``"<feedback> So the overall score is"`` followed by the score. The CoT is
closed with the same rule the backends apply to a generated CoT
(:func:`tract_eval.protocol.finish_cot`), so a feedback that already says
"So the overall ..." is cut there instead of carrying the delimiter twice.

Two sources are understood:

* Feedback Collection (``prometheus-eval/Feedback-Collection`` on the hub, or a
  local JSON/JSONL export): the prompt is rendered from the ``orig_*`` columns
  with the judges' Prometheus template, the CoT and score come from ``output``.
* Any Prometheus-format file with a pre-formatted prompt in ``instruction`` and
  annotation lists ``gpt4_feedback`` / ``gpt4_score`` (the Vicuna and MT Bench
  files): one row per feedback, paired with the score at the same index.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..candidates import DEFAULT_DELIMITER
from ..errors import UserError
from ..parsing import parse_score
from ..prompts import GradingFields, format_rubric, parse_prometheus_prompt, render_prompt
from ..protocol import finish_cot

log = logging.getLogger(__name__)

FEEDBACK_COLLECTION = "prometheus-eval/Feedback-Collection"
PROMETHEUS_TEMPLATE = "prometheus_absolute"
_RESULT = re.compile(r"\s*\[RESULT\]")
_ORIG_COLUMNS = ("orig_instruction", "orig_response", "orig_criteria")


class TrainingDataError(UserError, ValueError):
    pass


@dataclass
class TrainingRow:
    id: str
    prompt: str  # the grading prompt (user message), not yet wrapped in a chat template
    cot: str  # ends with the delimiter
    score: int
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rejected:
    source: str
    row: str
    reason: str


@dataclass
class PreparedData:
    rows: list[TrainingRow]
    rejected: list[Rejected]


def annotation_cot(feedback: str, delimiter: str = DEFAULT_DELIMITER, cut_marker: str | None = "So the overall") -> str:
    """``feedback`` (without its ``[RESULT]`` part) turned into a CoT that ends with the delimiter."""
    text = feedback.strip()
    kept, forced, _ = finish_cot(text, delimiter, cut_marker)
    cot = (kept.rstrip() + " " + forced.strip()).strip() if forced else kept
    if cot == delimiter or not kept.strip():
        raise TrainingDataError("the feedback is empty")
    return cot


def split_feedback(output: str, scale: tuple[int, int]) -> tuple[str, int]:
    """``"<feedback> [RESULT] <n>"`` -> (feedback, n); raises TrainingDataError when either part is missing."""
    match = _RESULT.search(output or "")
    if match is None:
        raise TrainingDataError("no '[RESULT]' marker in the output")
    score = parse_score(output[match.start():], scale)
    if score is None:
        raise TrainingDataError(f"no score in {scale[0]}..{scale[1]} after '[RESULT]': {output[match.start():][:40]!r}")
    return output[: match.start()], score


def _feedback_collection_prompt(record: dict) -> str:
    missing = [c for c in _ORIG_COLUMNS if not isinstance(record.get(c), str)]
    if missing:
        raise TrainingDataError(f"missing column(s) {missing}")
    descriptions = []
    for k in range(1, 6):
        value = record.get(f"orig_score{k}_description")
        if not isinstance(value, str):
            raise TrainingDataError(f"missing column orig_score{k}_description")
        descriptions.append(value)
    reference = record.get("orig_reference_answer")
    fields = GradingFields(
        instruction=record["orig_instruction"].strip(),
        response=record["orig_response"].strip(),
        rubric=format_rubric(record["orig_criteria"], descriptions),
        reference_answer=reference.strip() if isinstance(reference, str) and reference.strip() else None,
        # Feedback Collection's prompts are Prometheus-1's, which say "Feedback: (write a feedback ...)"
        feedback_label="Feedback: ",
    )
    return render_prompt(PROMETHEUS_TEMPLATE, fields)


def rows_from_feedback_collection(records: Iterable[dict], source: str, delimiter: str,
                                  scale: tuple[int, int]) -> PreparedData:
    rows, rejected = [], []
    for index, record in enumerate(records):
        row_id = f"{Path(source).stem}:{index}"
        try:
            prompt = _feedback_collection_prompt(record)
            feedback, score = split_feedback(record.get("output"), scale)
            cot = annotation_cot(feedback, delimiter)
        except TrainingDataError as exc:
            rejected.append(Rejected(source, str(index), str(exc)))
            continue
        rows.append(TrainingRow(row_id, prompt, cot, score, source))
    return PreparedData(rows, rejected)


def rows_from_annotated_prompts(records: Iterable[dict], source: str, delimiter: str,
                                scale: tuple[int, int]) -> PreparedData:
    """Pre-formatted prompts with ``gpt4_feedback`` / ``gpt4_score`` lists: one row per feedback."""
    rows, rejected = [], []
    for index, record in enumerate(records):
        prompt = record.get("instruction")
        feedbacks, scores = record.get("gpt4_feedback"), record.get("gpt4_score")
        try:
            if not isinstance(prompt, str):
                raise TrainingDataError("no 'instruction' text")
            parse_prometheus_prompt(prompt)  # a clear error now beats a silent bad prompt later
            if not isinstance(feedbacks, list) or not isinstance(scores, list):
                raise TrainingDataError("'gpt4_feedback' and 'gpt4_score' must be lists")
            if len(feedbacks) != len(scores):
                raise TrainingDataError(f"{len(feedbacks)} feedbacks but {len(scores)} scores")
        except ValueError as exc:
            rejected.append(Rejected(source, str(index), str(exc)))
            continue
        for k, (feedback, score) in enumerate(zip(feedbacks, scores)):
            where = f"{index}.gpt4_feedback[{k}]"
            try:
                if not isinstance(score, int) or not scale[0] <= score <= scale[1]:
                    raise TrainingDataError(f"score {score!r} is not an integer in {scale[0]}..{scale[1]}")
                if not isinstance(feedback, str):
                    raise TrainingDataError("feedback is not text")
                marker = _RESULT.search(feedback)
                if marker:  # a feedback that writes its own verdict must agree with the listed score
                    written = parse_score(feedback[marker.start():], scale)
                    if written != score:
                        raise TrainingDataError(f"feedback says [RESULT] {written} but the score is {score}")
                    feedback = feedback[: marker.start()]
                cot = annotation_cot(feedback, delimiter)
            except TrainingDataError as exc:
                rejected.append(Rejected(source, where, str(exc)))
                continue
            meta = {key: record[key] for key in ("idx", "response_source", "category") if key in record}
            rows.append(TrainingRow(f"{Path(source).stem}:{index}:{k}", prompt, cot, score, source, meta))
    return PreparedData(rows, rejected)


def _read_records(source: str) -> list[dict]:
    path = Path(source)
    if path.exists():
        from ..benchmarks.base import read_text_utf8  # not-UTF-8 bytes: an error naming file and position

        text = read_text_utf8(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TrainingDataError(f"{source}: line {number} is not JSON: {exc}") from exc
        if isinstance(data, dict):  # {"data": [...]} or a one-line JSONL file
            data = data["data"] if isinstance(data.get("data"), list) else [data]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise TrainingDataError(f"{source}: expected a JSON array of objects or JSONL")
        return data
    if source.startswith((".", "/", "~")) or source.endswith((".json", ".jsonl")):
        raise TrainingDataError(f"data file {source} does not exist")
    import datasets  # a hub dataset id

    return list(datasets.load_dataset(source, split="train"))


def prepare(sources: list[str], delimiter: str = DEFAULT_DELIMITER, scale: tuple[int, int] = (1, 5),
            limit: int | None = None) -> PreparedData:
    """Rows from every source, in order; the format of each is recognised from its columns."""
    rows, rejected = [], []
    for source in sources:
        records = _read_records(source)
        if not records:
            raise TrainingDataError(f"{source}: no rows")
        first = records[0]
        if "gpt4_feedback" in first and "instruction" in first:
            part = rows_from_annotated_prompts(records, source, delimiter, scale)
        elif "output" in first and any(c in first for c in _ORIG_COLUMNS):
            part = rows_from_feedback_collection(records, source, delimiter, scale)
        else:
            raise TrainingDataError(
                f"{source}: unknown format; expected Feedback Collection columns (orig_*, output) or "
                f"a Prometheus file with instruction, gpt4_feedback, gpt4_score (found {sorted(first)[:12]})")
        rows += part.rows
        rejected += part.rejected
        if limit is not None and len(rows) >= limit:
            rows = rows[:limit]
            break
    return PreparedData(rows, rejected)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}: line {number} is not JSON: {exc}") from exc


def load_training_rows(path: str | Path, delimiter: str = DEFAULT_DELIMITER, scale: tuple[int, int] = (1, 5),
                       limit: int | None = None, need_cot: bool = True) -> list[TrainingRow]:
    """Read prepared JSONL; every row must carry a prompt, an integer score and (if needed) a CoT ending in the delimiter."""
    if not Path(path).is_file():
        raise TrainingDataError(f"training data {path} does not exist (create it with 'tract-eval train prepare')")
    rows = []
    for number, record in enumerate(iter_jsonl(path), 1):
        where = f"{path}: line {number}"
        for key in ("prompt", "score") + (("cot",) if need_cot else ()):
            if key not in record:
                raise TrainingDataError(f"{where}: missing field {key!r}")
        score = record["score"]
        if not isinstance(score, int) or isinstance(score, bool) or not scale[0] <= score <= scale[1]:
            raise TrainingDataError(f"{where}: field 'score' must be an integer in {scale[0]}..{scale[1]}, not {score!r}")
        cot = record.get("cot", "")
        if need_cot and not (isinstance(cot, str) and cot.endswith(delimiter)):
            raise TrainingDataError(f"{where}: field 'cot' must end with {delimiter!r}")
        rows.append(TrainingRow(
            id=str(record.get("id", number)), prompt=record["prompt"], cot=cot, score=score,
            source=record.get("source", ""), meta=record.get("meta", {}),
        ))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise TrainingDataError(f"{path}: no rows")
    return rows
