import pytest

from tract_eval import parse_score


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
