"""The verdict parsers against their reference sources (issue 18, point 5).

``LIBRARY``: prometheus-eval @ dcfb4427 ``libs/prometheus-eval/prometheus_eval/parser.py``
(``parse_output(text, "absolute")[1]``, the parser ``PrometheusEval.single_absolute_grade`` uses); every
expected value in this table was produced by running that file's own function on the shape.
``TRACT_LABEL``: d223302/TRACT @ dcb7a649 ``finetuning_utils/prepare_dataset.py`` line 85 / 117
(``output.split('[RESULT]')[-1].strip()`` is the score written after the CoT), looked up by
``custom_processor.py`` line 85 in the score-token table (one digit token 1-5; anything else fails).
"""
from __future__ import annotations

import pytest

from tract_eval.parsing import parse_library_verdict, parse_reference_verdict, parse_score, parse_training_label

LIBRARY = [  # (output, prometheus_eval.parser.parse_output(output, "absolute")[1])
    ("Good feedback. [RESULT] 4", 4), ("Good. [RESULT] 4\n", 4), ("Good. [RESULT] 4 ", 4), ("Good. [RESULT]4", 4),
    ("[RESULT] (4)", 4), ("[RESULT] [4]", 4), ("[SCORE] 4", 4), ("Score 4", 4), ("Score: 4", 4), ("score: 3", 3),
    ("Result: 2", 2), ("[Result]: 5", 5), ("[Result] 5", 5), ("The score of 3", 3), ("[RESULT] 4/5", 4),
    ("[RESULT] 4 / 5", None), ("[RESULT] 4 out of 5", 4), ("[RESULT] 4 out of 10", None), ("[RESULT] 4/10", None),
    ("[RESULT] 4\n\nExtra text 5", None), ("[RESULT] 4.", None), ("[RESULT] **4**", None), ("[RESULT] 6", None),
    ("[RESULT] 0", None), ("[RESULT] 45", None), ("no verdict here", None), ("", None),
    ("[RESULT] 3 [RESULT] 4", 4), ("Feedback mentions Score 1: bad. [RESULT] 5", 5), ("[RESULT] 4</s>", None),
    ("[RESULT] Score: 4", 4), ("[RESULT] 4.5", None), ("So the overall score is 4", None), ("RESULT: 3", 3),
    ("[RESULT]\n4", 4), ("result 2", 2), ("(4)", None), ("Score: 4\n", 4), ("Score:4 ", 4), ("[RESULT] 3\n\n", 3),
    ("score of 2/5", 2), ("Feedback. [RESULT] (3) ", 3),
]


@pytest.mark.parametrize("output, expected", LIBRARY)
def test_library_parser_agrees_with_prometheus_eval_library(output, expected):
    assert parse_library_verdict(output, (1, 5)) == expected


def test_the_three_parsers_differ_where_the_issue_says():
    """eval/run_evaluate.py:parse_output (reference), the library parser and tract-eval's lenient one."""
    for text in ("[SCORE] 4", "Score 4", "Result: 2"):
        assert parse_library_verdict(text) is not None and parse_score(text) is None
        assert parse_reference_verdict(text) is None
    for text in ("[RESULT] 4\n\nExtra text 5", "[RESULT] 4.", "[RESULT] **4**"):
        assert parse_library_verdict(text) is None and parse_score(text) == 4
    assert parse_library_verdict(None) is None


def test_library_parser_on_another_scale_puts_its_high_end_for_5():
    assert parse_library_verdict("[RESULT] 7/10", (1, 10)) == 7
    assert parse_library_verdict("[RESULT] 7/5", (1, 10)) is None
    assert parse_library_verdict("[RESULT] 7", (1, 5)) is None


def tract_label(output: str) -> int | None:
    """prepare_dataset.py: the text after the last [RESULT], stripped; custom_processor.py then needs it to be
    one of the score tokens "1".."5" (indices_to_scores), else the row cannot be trained."""
    label = output.split("[RESULT]")[-1].strip()
    return int(label) if label in ("1", "2", "3", "4", "5") else None


TRAINING_OUTPUTS = [
    "Feedback. So the overall score is 4. [RESULT] 4", "Feedback. [RESULT] 4.", "Feedback. [RESULT] Score: 4",
    "Feedback. [RESULT]  3 \n", "[RESULT] 2 [RESULT] 5", "Feedback. [RESULT] 4\n\nExtra 5", "Feedback. [RESULT] **4**",
    "Feedback without a marker", "4", "Feedback. [RESULT] 6", "Feedback. [RESULT] (4)", "Feedback. [RESULT]",
]


@pytest.mark.parametrize("output", TRAINING_OUTPUTS)
def test_training_labels_follow_prepare_dataset(output):
    assert parse_training_label(output, (1, 5)) == tract_label(output)


def test_feedback_collection_rows_take_the_label_as_prepare_dataset_does(tmp_path):
    from tract_eval.training.data import TrainingDataError, split_feedback

    assert split_feedback("Good. [RESULT] 2 [RESULT] 5", (1, 5)) == ("Good. [RESULT] 2", 5)  # the last marker
    for output in ("Good. [RESULT] 4.", "Good. [RESULT] Score: 4", "Good. [RESULT] 4\n\nmore"):
        assert parse_score(output) == 4  # the lenient parser read these before issue 18
        with pytest.raises(TrainingDataError, match="no score 1..5 after the last"):
            split_feedback(output, (1, 5))
