"""Reports score RewardBench with the unparsed-pair rule the run was scored with (its manifest), so the
table and ``compare`` print what ``metrics.json`` says, under both rules (issue 18, point 3)."""
from __future__ import annotations

import json

import pytest

from reports_helpers import pair_rows, write_run
from tract_eval.errors import ConfigError
from tract_eval.metrics import pairwise_metrics
from tract_eval.reports.compare import compare
from tract_eval.reports.runs import collect_runs
from tract_eval.reports.table import Column, build_table

SECTIONS = (("Chat", "alpacaeval-easy"), ("Chat Hard", "llmbar-natural"), ("Safety", "donotanswer"),
            ("Reasoning", "math-prm"))


def rewardbench_run(out, judge: str, rule: str, unparsed: int, pairs_per_section: int = 4):
    """Every section: the first ``unparsed`` pairs have an unscored chosen side, the rest are won."""
    pairs = {section: [(subset, None if k < unparsed else 5.0, 3.0) for k in range(pairs_per_section)]
             for section, subset in SECTIONS}
    rows = pair_rows(pairs)
    for row in rows:
        if row["prediction"] is None:
            row["status"], row["per_cot"] = "parse_failure", [None]
    folder = write_run(out, judge, "rewardbench", rows)
    collected = [r for r in collect_runs([folder]) if r.bench == "rewardbench"][0]
    metrics = {"bench": "rewardbench", "kind": "pairwise",
               **pairwise_metrics(collected.rows, collected.section_scheme(), rule)}  # as runner.py writes it
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps({"judge": {"name": judge}, "seed": 0, "bench": {
        "name": "rewardbench", "kind": "pairwise", "options": {"unparsed_pairs": rule}}}))
    return metrics


@pytest.mark.parametrize("rule", ["half", "exclude"])
def test_table_prints_the_numbers_of_metrics_json(tmp_path, rule):
    metrics = rewardbench_run(tmp_path, "judge", rule, unparsed=1)
    table = build_table(collect_runs([tmp_path]), ["r"])
    cell = lambda m: table.cells["judge", Column("rewardbench", m, accuracy=True)].estimate.value  # noqa: E731
    assert cell("Score") == pytest.approx(metrics["score"])
    for section, values in metrics["sections"].items():
        assert cell(section) == pytest.approx(values["accuracy"])
    # 3 of 4 pairs won, the fourth unparsed: 0.5 (reward-bench) or left out
    assert metrics["score"] == pytest.approx((3 + 0.5) / 4 if rule == "half" else 1.0)


def test_a_run_with_no_parsed_pair_has_no_score_under_exclude(tmp_path):
    metrics = rewardbench_run(tmp_path, "judge", "exclude", unparsed=4)
    assert metrics["score"] is None
    table = build_table(collect_runs([tmp_path]), ["r"])
    assert not [c for c in table.columns if c.group == "rewardbench"]  # nothing printed, not 0.5
    metrics = rewardbench_run(tmp_path / "half", "judge", "half", unparsed=4)
    table = build_table(collect_runs([tmp_path / "half"]), ["r"])
    assert table.cells["judge", Column("rewardbench", "Score", accuracy=True)].estimate.value == \
        pytest.approx(metrics["score"]) == pytest.approx(0.5)


@pytest.mark.parametrize("rule", ["half", "exclude"])
def test_compare_scores_each_run_by_its_rule(tmp_path, rule):
    a = rewardbench_run(tmp_path / "a", "a", rule, unparsed=1)
    b = rewardbench_run(tmp_path / "b", "b", rule, unparsed=0)
    differences = compare(collect_runs([tmp_path / "a"]), collect_runs([tmp_path / "b"]), ["r"], resamples=50)
    score = next(d for d in differences if d.measure == "Score")
    if rule == "half":  # the shared pairs are all pairs; each side as its metrics.json says
        assert (score.value_a, score.value_b) == pytest.approx((a["score"], b["score"]))
    else:  # the unparsed pair is left out of A, so of the shared pairs
        assert (score.value_a, score.value_b) == pytest.approx((1.0, 1.0))


def test_compare_refuses_runs_scored_by_different_rules(tmp_path):
    rewardbench_run(tmp_path / "a", "a", "half", unparsed=1)
    rewardbench_run(tmp_path / "b", "b", "exclude", unparsed=1)
    with pytest.raises(ConfigError, match="scored unparsed pairs 'half' but .* 'exclude'"):
        compare(collect_runs([tmp_path / "a"]), collect_runs([tmp_path / "b"]), ["r"], resamples=50)
