import pytest

from tract_eval import parse_score
from tract_eval.parsing import parse_reference_verdict


@pytest.mark.parametrize("text, expected", [
    ("The response is thorough and accurate. [RESULT] 4", 4),
    ("Feedback: The response is thorough. [RESULT] 5", 5),
    ("The response misses key steps.\n[RESULT] 2</s>", 2),
    ("The response is accurate. So the overall score is 3", 3),
    ("...mostly correct. So the overall score is 4.", 4),
    ("[RESULT] (3)", 3),
    ("[RESULT]: 1", 1),
    ("[result] 2", 2),
    ("It follows the rubric well. Overall score: 4", 4),
    # the last verdict wins when a judge corrects itself
    ("[RESULT] 2 ... on reflection the answer is complete. [RESULT] 5", 5),
])
def test_reads_verdicts_in_shapes_judges_write(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text", [
    "",
    None,
    "The response lists 5 steps and covers 3 of the 4 rubric points.",  # numbers in feedback, no verdict
    "Score 1: The response lacks detail.\nScore 5: comprehensive.",  # an echoed rubric
    "The response is good. [RESULT] 7",  # out of range
    "The response is good. [RESULT] 0",
    "The response is good. [RESULT] 4.5",  # not an integer score
    "The response is good. [RESULT]",  # truncated before the score
    "The response is good. So the overall score is",  # truncated
    "The output format should be: [RESULT] (an integer number between 1 and 5)",  # echoed instruction
])
def test_no_verdict_gives_none(text):
    assert parse_score(text) is None


def test_other_scales():
    assert parse_score("[RESULT] 10", scale=(1, 10)) == 10
    assert parse_score("[RESULT] 10") is None
    assert parse_score("So the overall score is 0", scale=(0, 3)) == 0


# Verdict shapes prometheus-eval's parser (eval/parser.py) accepts after a marker, and shapes that
# must stay refused (point 9 of issue 8).
@pytest.mark.parametrize("text, expected", [
    ("Needs improvement. [RESULT] Score: 2", 2),
    ("Well done. [RESULT] Result: 4", 4),
    ("Average. [RESULT] 4/5", 4),
    ("Average. [RESULT] 4 / 5", 4),
    ("Excellent. [RESULT] 5 out of 5", 5),
    ("Poor performance. [RESULT] score of 1", 1),
    ("Poor performance. [RESULT] a score of 2", 2),
    ("Good job. [Result] 3", 3),
    ("Good job. [RESULT] (5)", 5),
    ("Good job. [RESULT] **4**", 4),
    ("Good job. (Score 5)", 5),
    ("Good job. [Score 4]", 4),
    ("Good job. [Score: 4].", 4),
    ("Good job. score: 3", 3),
])
def test_reads_prometheus_eval_verdict_shapes(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text", [
    "The answer cites 4 sources (Score 1: lacks detail) and more text follows.",  # not closing
    "Score 1: The response is poor.\nScore 4: The response is good.",  # echoed rubric lines
    "[Score 1: The response lacks detail.]",  # rubric line in brackets
    "The response is fine. [RESULT] 3.5",  # a decimal
    "The response is fine. [RESULT] 3/4",  # a fraction of another scale
    "The response is fine. [RESULT] 8 out of 10",
    "The response is fine. [RESULT] 6/5",  # out of scale
    "The response is fine. (Score 9)",
    "It has 4 out of 5 required parts.",  # no marker: a count in the feedback
    "The response scores 4.",
])
def test_refuses_numbers_that_are_not_a_verdict(text):
    assert parse_score(text) is None


@pytest.mark.parametrize("text, expected", [
    ("Good answer. [RESULT] 4", 4),
    ("Good answer.\n[RESULT]   5 \n", 5),
    ("[RESULT] 1", 1),
    ("Good answer. [RESULT] Score: 4", None),  # a label after the marker
    ("Good answer. [RESULT] 4/5", None),
    ("Good answer. [RESULT] 4.", None),
    ("[RESULT] 3 [RESULT] 4", None),  # not exactly one marker
    ("Good answer, 4", None),
    ("[RESULT] 6", None),
    ("", None),
])
def test_reference_verdict_is_prometheus_evals_eval_rule(text, expected):
    """eval/run_evaluate.py:parse_output (absolute): split on [RESULT] into exactly two parts, and the
    stripped rest is one of the scale's scores."""
    parts = text.split("[RESULT]")
    oracle = int(parts[1].strip()) if len(parts) == 2 and parts[1].strip() in ["1", "2", "3", "4", "5"] else None
    assert parse_reference_verdict(text) == oracle == expected
