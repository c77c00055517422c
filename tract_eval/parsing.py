"""Reading a score out of a judge's generated text."""
from __future__ import annotations

import math
import re

# Markers that introduce the final score, in the shapes judges actually write.
# Only text after such a marker is trusted, so numbers in the feedback or an
# echoed rubric ("Score 1: ...") are never taken for the verdict.
_SCORE_MARKERS = re.compile(
    r"(?:\[RESULT\]|So the overall score is|overall score is|Overall score:|Score:)",
    re.IGNORECASE,
)
# After a marker, the verdict shapes prometheus-eval's parser (eval/parser.py) accepts: optional
# brackets/quotes, an optional label ("Score:", "Result:", "score of"), an integer that is not
# part of a decimal, and optionally "/ high" or "out of high".
_VERDICT_AFTER_MARKER = re.compile(
    r"""\s*:?\s*[(\["'*]*\s*
        (?:(?:a\s+)?score\s+of|score\s*:?|result\s*:?)?\s*[(\["'*]*\s*
        (\d+)(?!\d|\.\d)
        (?:\s*(?:/|out\s+of)\s*(\d+)(?!\d|\.\d))?""",
    re.IGNORECASE | re.VERBOSE,
)
# A closing "(Score 4)" or "[Score 4]" at the very end of the output.
_CLOSING_VERDICT = re.compile(r"[(\[]\s*score\s*:?\s*(\d+)\s*[)\]](?:\W|</s>)*\Z", re.IGNORECASE)


def _in_scale(value: int, out_of: str | None, scale: tuple[int, int]) -> int | None:
    low, high = scale
    if out_of is not None and int(out_of) != high:
        return None  # "3/4" or "4 out of 10" on a 1-5 scale is not a verdict on this scale
    return value if low <= value <= high else None


def parse_score(text: str | None, scale: tuple[int, int] = (1, 5)) -> int | None:
    """Return the integer verdict in a Prometheus/TRACT-style output, or None.

    The last score marker in the text wins (``[RESULT] n``, ``So the overall score is n``, also
    ``[RESULT] Score: n``, ``[RESULT] score of n``, ``[RESULT] n/5``, ``[RESULT] n out of 5``); else
    a closing ``(Score n)`` / ``[Score n]``. The number must lie inside ``scale``; decimals and
    fractions of another scale are refused. Text with no verdict yields None: a bare number anywhere
    in the output (the feedback, an echoed rubric line ``Score 1: ...``) is not a verdict.
    """
    if not text:
        return None
    for marker in reversed(list(_SCORE_MARKERS.finditer(text))):
        match = _VERDICT_AFTER_MARKER.match(text, marker.end())
        if match is None:
            continue
        return _in_scale(int(match.group(1)), match.group(2), scale)
    closing = _CLOSING_VERDICT.search(text)
    if closing:
        return _in_scale(int(closing.group(1)), None, scale)
    return None


def parse_reference_verdict(text: str | None, scale: tuple[int, int] = (1, 5)) -> int | None:
    """prometheus-eval's own evaluation rule (``eval/run_evaluate.py:parse_output``, absolute mode):
    the output holds exactly one ``[RESULT]`` and what follows it, stripped, is a score of the scale
    and nothing else; None otherwise (prometheus-eval then regenerates)."""
    parts = (text or "").split("[RESULT]")
    if len(parts) != 2:
        return None
    result = parts[1].strip()
    return int(result) if result in {str(k) for k in range(scale[0], scale[1] + 1)} else None


def _library_pattern(high: int) -> re.Pattern:
    # prometheus-eval libs/prometheus-eval/prometheus_eval/parser.py:_parse_output_absolute, its alternatives in
    # its order: a marker, brackets or spaces, the number, optionally a closing bracket / space / "/5" /
    # "out of 5", then only whitespace to the end of the text (re.search, no MULTILINE: "$" also matches
    # before a final newline). The library's 5 is the scale's high end here.
    return re.compile(
        r"(?:\[RESULT\]|\[SCORE\]|Score:?|score:?|Result:?|\[Result\]:?|score\s+of)\s*(?:\(|\[|\s)*(\d+)"
        rf"(?:(?:\)|\]|\s|$)|(?:/\s*{high}|\s*out\s*of\s*{high}))?(?:\s*$)",
        re.IGNORECASE)


def parse_library_verdict(text: str | None, scale: tuple[int, int] = (1, 5)) -> int | None:
    """prometheus-eval's library parser (``prometheus_eval/parser.py``, absolute mode: what
    ``PrometheusEval.single_absolute_grade`` users get): the first place where a marker (``[RESULT]``,
    ``[SCORE]``, ``Score``, ``Result``, ``[Result]``, ``score of``; any case, optional colon) and a number
    end the text, up to a closing bracket, ``/5`` or ``out of 5`` and whitespace; the number must lie in
    the scale. So ``[SCORE] 4``, ``Score 4`` and ``Result: 2`` are verdicts, while ``[RESULT] 4.``,
    ``[RESULT] **4**``, ``[RESULT] 4 / 5`` and a verdict followed by more text are not. On a 1-5
    scale this is the library's rule exactly; other scales put their high end where it has 5."""
    if text is None:
        return None
    match = _library_pattern(scale[1]).search(text)
    if match is None:
        return None
    value = int(match.group(1))
    return value if scale[0] <= value <= scale[1] else None


def parse_training_label(output: str, scale: tuple[int, int] = (1, 5)) -> int | None:
    """TRACT's training label (``finetuning_utils/prepare_dataset.py``: ``output.split('[RESULT]')[-1].strip()``,
    which becomes the score token the RAFT loss looks up): the text after the last ``[RESULT]``, stripped,
    must be a score of the scale and nothing else; None otherwise (the reference's lookup would fail)."""
    label = (output or "").split("[RESULT]")[-1].strip()
    return int(label) if label in {str(k) for k in range(scale[0], scale[1] + 1)} else None


def parse_bare_score(text: str | None) -> float | None:
    """A score written alone, as TRACT reads its one sampled score token (``evaluation_utils.
    try_convert_to_float``: ``float(text.strip().strip('.'))``); None where that is not a finite
    number (the reference's NaN, dropped from the correlations)."""
    if text is None:
        return None
    try:
        value = float(text.strip().strip("."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None
