"""The Python API on the embedded model: grade, grade_many and evaluate (one model load, the runner's files)."""
from __future__ import annotations

import json
import math

import pytest

import tract_eval
from tract_eval.records import MANIFEST, METRICS, PREDICTIONS, RESULTS


def test_api_is_exported():
    assert {"grade", "grade_many", "evaluate", "Grade"} <= set(tract_eval.__all__)


@pytest.mark.slow
def test_grade_rail_reads_a_distribution_over_the_scale(embedded_backend):
    g = tract_eval.grade("What is 2+2?", "4", "Is the answer correct?", judge="rail")
    assert g.status == "ok" and len(g.cots) == 1  # rail writes no CoT
    assert sorted(g.probs) == [1, 2, 3, 4, 5] and math.isclose(sum(g.probs.values()), 1.0, rel_tol=1e-6)
    raw = g.record.raw_probs[0]  # the paper's RAIL (default): expectation over the raw candidate probabilities
    assert math.isclose(g.score, sum(int(k) * p for k, p in raw.items()), rel_tol=1e-6)
    assert "What is 2+2?" in g.record.input and "[Is the answer correct?]" in g.record.input
    renormalised = tract_eval.grade("What is 2+2?", "4", "Is the answer correct?", judge="rail", renormalize=True)
    assert math.isclose(renormalised.score, sum(k * p for k, p in renormalised.probs.items()), rel_tol=1e-6)
    # the scale reaches the prompt and the candidates
    ten = tract_eval.grade("What is 2+2?", "4", "Is the answer correct?", judge="tract", scale="1-10",
                           max_new_tokens=4)
    assert sorted(ten.probs) == list(range(1, 11)) and "between 1 and 10" in ten.record.input


@pytest.mark.slow
def test_grade_many_reuses_one_model_and_keeps_order(embedded_backend):
    from tract_eval.judges import build_judge

    rows = [{"instruction": "Say hi.", "response": "Hi!", "rubric": "Polite?"},
            ("Capital of France?", "Paris", "Correct?", "Paris")]
    grades = tract_eval.grade_many(rows, judge="tract", max_new_tokens=8, seed=1)
    assert [g.record.id for g in grades] == ["1", "2"]
    assert all(len(g.cots) == 1 and g.record.finish_reasons for g in grades)
    assert "Reference Answer" in grades[1].record.input and "Reference Answer" not in grades[0].record.input
    again = tract_eval.grade_many(rows, judge="tract", max_new_tokens=8, seed=1)
    assert [g.record.cots for g in again] == [g.record.cots for g in grades]  # seeded per sample
    judge = build_judge("tract", max_new_tokens=8, seed=1, scale=(1, 5))
    assert judge.backend is embedded_backend  # the session's one model, not a second load


@pytest.mark.slow
def test_evaluate_writes_what_the_cli_writes(tmp_path, embedded_backend):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Q{i}", "response": f"A{i}", "rubric": "Good?", "score": s})
                            + "\n" for i, s in enumerate([1, 3, 5])))
    metrics = tract_eval.evaluate("rail", str(data), out=tmp_path / "runs", run_name="rail-mine", ci=True)
    assert metrics["mine"]["n"] == 3 and metrics["mine"]["pearson"] is not None
    folder = tmp_path / "runs" / "rail-mine" / "mine"
    assert all((folder / name).is_file() for name in (PREDICTIONS, METRICS, MANIFEST, RESULTS))
    results = json.loads((folder / RESULTS).read_text())
    assert results["model"] == "embedded:SmolLM2-135M-Instruct.Q4_1" and results["backend"]["backend"] == "transformers"
    assert results["metrics"]["pearson"] == metrics["mine"]["pearson"]
    assert set(results["intervals"]["measures"]) == {"r", "rho", "tau", "rmse"}
    assert "torch" in results["versions"]
