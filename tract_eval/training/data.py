"""Training data: (grading prompt, CoT ending in the delimiter, integer score) rows, as TRACT formats them.

TRACT rewrites an annotation ``"<feedback> [RESULT] <n>"`` as the CoT
``"<feedback> So the overall score is"`` followed by the score. The CoT is
closed with the same rule the backends apply to a generated CoT
(:func:`tract_eval.protocol.finish_cot`), so a feedback that already says
"So the overall ..." is cut there instead of carrying the delimiter twice.

Two sources are understood:

* Feedback Collection (``prometheus-eval/Feedback-Collection`` on the hub, or a
  local JSON/JSONL export), as TRACT's ``finetuning_utils/prepare_dataset.py`` prepares it: the
  prompt is ``training/prompts/with_feedback.prompt`` (paper Table 4) filled with the ``orig_*``
  columns; the CoT is ``output`` up to its first "So the overall", stripped, then the delimiter, and
  rows whose output never says "So the overall" are left out and counted. Score-only rows
  (``mode="score-only"``, for the B.1 CE and B.4 RAFT models) use ``no_feedback.prompt`` and the
  bare score as the target.
* Any Prometheus-format file with a pre-formatted prompt in ``instruction`` and
  annotation lists ``gpt4_feedback`` / ``gpt4_score`` (the Vicuna and MT Bench
  files): one row per feedback, paired with the score at the same index. These feedbacks never
  say "So the overall"; ``force_delimiter=True`` (a named departure from the reference) appends the
  delimiter to such feedback instead of leaving the row out.
"""
from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..candidates import DEFAULT_DELIMITER
from ..cards import card_dir
from ..errors import UserError
from ..parsing import parse_score, parse_training_label
from ..prompts import parse_prometheus_prompt
from ..protocol import finish_cot

log = logging.getLogger(__name__)

FEEDBACK_COLLECTION = "prometheus-eval/Feedback-Collection"
_RESULT = re.compile(r"\s*\[RESULT\]")
_ORIG_COLUMNS = ("orig_instruction", "orig_response", "orig_criteria")
CUT_MARKER = "So the overall"
MODES = ("cot", "score-only")
# TRACT's training prompts (finetuning_utils/prompts/feedback_collection/), filled with str.format
TRAINING_PROMPTS = {"cot": "with_feedback.prompt", "score-only": "no_feedback.prompt"}


def training_prompt_template(mode: str) -> str:
    if mode not in MODES:
        raise TrainingDataError(f"training data mode must be one of {MODES}, not {mode!r}")
    return (card_dir("training") / "prompts" / TRAINING_PROMPTS[mode]).read_text(encoding="utf-8")


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
    """``"<feedback> [RESULT] <n>"`` -> (feedback, n) by TRACT's rule (prepare_dataset.py: the label is
    ``output.split('[RESULT]')[-1].strip()``, which must be a score of the scale; the feedback is what
    precedes that last ``[RESULT]``); raises TrainingDataError when the label is not a score."""
    output = output or ""
    score = parse_training_label(output, scale)
    if score is None:
        label = output.split("[RESULT]")[-1].strip()[:40]
        if "[RESULT]" not in output:
            raise TrainingDataError(f"no '[RESULT]' marker in the output (prepare_dataset.py would take all of it, "
                                    f"{label!r}, as the score)")
        raise TrainingDataError(f"no score {scale[0]}..{scale[1]} after the last '[RESULT]': {label!r} "
                                "(prepare_dataset.py takes that text verbatim as the score)")
    return output.rpartition("[RESULT]")[0].rstrip(), score


def _feedback_collection_prompt(record: dict, mode: str) -> str:
    """The row's prompt as TRACT writes it: ``template.format(**row)`` over the template's columns."""
    template = training_prompt_template(mode)
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [name for name in names if not isinstance(record.get(name), str)]
    if missing:
        raise TrainingDataError(f"missing column(s) {missing}")
    return template.format(**{name: record[name] for name in names})


def rows_from_feedback_collection(records: Iterable[dict], source: str, delimiter: str,
                                  scale: tuple[int, int], mode: str = "cot",
                                  force_delimiter: bool = False) -> PreparedData:
    rows, rejected = [], []
    for index, record in enumerate(records):
        row_id = f"{Path(source).stem}:{index}"
        try:
            prompt = _feedback_collection_prompt(record, mode)
            output = record.get("output")
            feedback, score = split_feedback(output, scale)
            if mode == "score-only":
                cot = ""
            elif CUT_MARKER in output:  # prepare_dataset.py --cot_no_result
                cot = output.split(CUT_MARKER)[0].strip() + " " + delimiter
            elif force_delimiter:
                cot = annotation_cot(feedback, delimiter)
            else:
                raise TrainingDataError(f"no {CUT_MARKER!r} in the output (TRACT leaves such rows out)")
        except TrainingDataError as exc:
            rejected.append(Rejected(source, str(index), str(exc)))
            continue
        rows.append(TrainingRow(row_id, prompt, cot, score, source))
    return PreparedData(rows, rejected)


def rows_from_annotated_prompts(records: Iterable[dict], source: str, delimiter: str,
                                scale: tuple[int, int], force_delimiter: bool = False) -> PreparedData:
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
                if marker:  # a feedback that writes its own verdict must agree with the listed score (the label
                    # itself is the listed score: nothing is extracted, so tract-eval's lenient reading checks it)
                    written = parse_score(feedback[marker.start():], scale)
                    if written != score:
                        raise TrainingDataError(f"feedback says [RESULT] {written} but the score is {score}")
                    feedback = feedback[: marker.start()]
                if CUT_MARKER in feedback:
                    cot = feedback.split(CUT_MARKER)[0].strip() + " " + delimiter
                elif force_delimiter:
                    cot = annotation_cot(feedback, delimiter)
                else:
                    raise TrainingDataError(f"no {CUT_MARKER!r} in the feedback (TRACT leaves such rows out; "
                                            "--force-delimiter appends the delimiter instead)")
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
            limit: int | None = None, mode: str = "cot", force_delimiter: bool = False) -> PreparedData:
    """Rows from every source, in order; the format of each is recognised from its columns.

    ``mode``: "cot" rows (prompt, CoT, score) or "score-only" rows (no_feedback prompt, score)."""
    training_prompt_template(mode)  # a bad mode fails before any file is read
    rows, rejected = [], []
    for source in sources:
        records = _read_records(source)
        if not records:
            raise TrainingDataError(f"{source}: no rows")
        first = records[0]
        if "gpt4_feedback" in first and "instruction" in first:
            if mode == "score-only":
                raise TrainingDataError(f"{source}: score-only rows are TRACT's no_feedback prompt filled from "
                                        "Feedback Collection's orig_* columns; this file has none")
            part = rows_from_annotated_prompts(records, source, delimiter, scale, force_delimiter)
        elif "output" in first and any(c in first for c in _ORIG_COLUMNS):
            part = rows_from_feedback_collection(records, source, delimiter, scale, mode, force_delimiter)
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
