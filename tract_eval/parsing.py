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
# After the marker: optional brackets/quotes/spaces, then an integer that is not
# the start of a fraction ("4/5" is fine, "4.5" is not an integer score).
_NUMBER_AFTER_MARKER = re.compile(r"\s*:?\s*[\(\[\"'*]*\s*(\d+)(?![\d.]\d)")


def parse_score(text: str | None, scale: tuple[int, int] = (1, 5)) -> int | None:
    """Return the integer verdict in a Prometheus/TRACT-style output, or None.

    The last score marker in the text wins (``[RESULT] n`` or
    ``So the overall score is n``); the number must directly follow it and lie
    inside ``scale``. Text with no marker yields None: a bare number anywhere
    in the output is not a verdict.
    """
    if not text:
        return None
    low, high = scale
    for marker in reversed(list(_SCORE_MARKERS.finditer(text))):
        match = _NUMBER_AFTER_MARKER.match(text, marker.end())
        if match is None:
            continue
        value = int(match.group(1))
        return value if low <= value <= high else None
    return None


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
