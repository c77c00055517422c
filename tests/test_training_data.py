"""Training-data preparation, recipes and CLI overrides (no model needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tract_eval.prompts import parse_prometheus_prompt
from tract_eval.training.data import (
    TrainingDataError,
    annotation_cot,
    load_training_rows,
    prepare,
    split_feedback,
)

DELIM = "So the overall score is"


@pytest.fixture
def shared_file(data_dir):
    return lambda name: data_dir / "prometheus" / name


def test_annotation_cot_formats_like_tract():
    assert annotation_cot("  Good answer.  ") == "Good answer. So the overall score is"
    # a feedback that already says the delimiter is cut there, as at inference
    assert annotation_cot("Fine. So the overall score is 4 because") == "Fine. So the overall score is"
    assert annotation_cot("Fine. So the overall quality is high.") == "Fine. So the overall score is"
    with pytest.raises(TrainingDataError):
        annotation_cot("   ")


def test_split_feedback():
    assert split_feedback("Nice work. [RESULT] 4", (1, 5)) == ("Nice work.", 4)
    with pytest.raises(TrainingDataError, match="RESULT"):
        split_feedback("Nice work. Score 4", (1, 5))
    with pytest.raises(TrainingDataError, match="no score"):
        split_feedback("Nice work. [RESULT] 9", (1, 5))


def test_shared_files_give_one_row_per_feedback(shared_file):
    vicuna, mt_bench = shared_file("vicuna_eval.json"), shared_file("mt_bench_eval.json")
    # their feedbacks never say "So the overall": TRACT's rule leaves every one out, and counts it
    strict = prepare([str(vicuna), str(mt_bench)])
    assert strict.rows == [] and len(strict.rejected) == 1920
    assert all("So the overall" in r.reason for r in strict.rejected)
    prepared = prepare([str(vicuna), str(mt_bench)], force_delimiter=True)  # the named departure
    assert len(prepared.rows) == 1920 and prepared.rejected == []
    first = json.loads(vicuna.read_text())[0]
    row = prepared.rows[0]
    assert row.prompt == first["instruction"]
    assert row.score == first["gpt4_score"][0]
    assert row.cot == first["gpt4_feedback"][0].strip() + " " + DELIM
    assert all(r.cot.endswith(DELIM) and r.cot.count(DELIM) == 1 for r in prepared.rows)
    # MT Bench row 37 writes "[RESULT] Score: 1." inside its feedback: cut off, agrees with its score 1
    cut = next(r for r in prepared.rows if r.id == "mt_bench_eval:37:2")
    assert "[RESULT]" not in cut.cot and cut.score == 1


def test_prometheus_rows_with_bad_annotations_are_reported(tmp_path, shared_file):
    prompt = json.loads(shared_file("vicuna_eval.json").read_text())[0]["instruction"]
    records = [
        {"instruction": prompt, "gpt4_feedback": ["ok", "meh", "says [RESULT] 2"], "gpt4_score": [5, 7, 4]},
        {"instruction": prompt, "gpt4_feedback": ["a"], "gpt4_score": [3, 4]},
        {"instruction": "not a prometheus prompt", "gpt4_feedback": ["a"], "gpt4_score": [3]},
    ]
    path = tmp_path / "annotated.json"
    path.write_text(json.dumps(records))
    prepared = prepare([str(path)], force_delimiter=True)
    assert [r.id for r in prepared.rows] == ["annotated:0:0"]
    reasons = {r.row: r.reason for r in prepared.rejected}
    assert "not an integer in 1..5" in reasons["0.gpt4_feedback[1]"]
    assert "[RESULT] 2 but the score is 4" in reasons["0.gpt4_feedback[2]"]
    assert "1 feedbacks but 2 scores" in reasons["1"]
    assert "Task Description" in reasons["2"]


def feedback_collection_record(prompt: str, output: str) -> dict:
    """A Feedback Collection row whose orig_* columns hold the sections of a real Prometheus prompt."""
    fields = parse_prometheus_prompt(prompt)
    criteria, *lines = fields.rubric.split("\n")
    record = {
        "orig_instruction": fields.instruction,
        "orig_response": fields.response,
        "orig_reference_answer": fields.reference_answer,
        "orig_criteria": criteria.strip("[]"),
        "output": output,
        "orig_feedback": "unused", "orig_score": "4",
    }
    for k, line in enumerate(lines, 1):
        record[f"orig_score{k}_description"] = line.split(": ", 1)[1]
    return record


REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "tract"


def test_feedback_collection_jsonl_as_tract_prepares_it(tmp_path, shared_file):
    prompt = json.loads(shared_file("vicuna_eval.json").read_text())[0]["instruction"]
    records = [
        feedback_collection_record(prompt, "The response is thorough. So the overall score is 4. [RESULT] 4"),
        feedback_collection_record(prompt, "Thorough, no closing sentence. [RESULT] 4"),
        feedback_collection_record(prompt, "No verdict here."),
        {**feedback_collection_record(prompt, "Short. So the overall. [RESULT] 2"), "orig_score3_description": None},
    ]
    path = tmp_path / "feedback_collection.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prepared = prepare([str(path)])
    assert len(prepared.rows) == 1
    row = prepared.rows[0]
    # TRACT's with_feedback.prompt (paper Table 4) filled with the row's columns, as prepare_dataset.py does
    assert row.prompt == (REFERENCE / "with_feedback.prompt").read_text().format(**records[0])
    assert (row.cot, row.score) == ("The response is thorough. So the overall score is", 4)
    assert [(r.row, r.reason.split(" (")[0]) for r in prepared.rejected] == [
        ("1", "no 'So the overall' in the output"),
        ("2", "no '[RESULT]' marker in the output"),
        ("3", "missing column(s) ['orig_score3_description']"),
    ]
    forced = prepare([str(path)], force_delimiter=True)
    assert [r.cot for r in forced.rows][1] == "Thorough, no closing sentence. So the overall score is"

    score_only = prepare([str(path)], mode="score-only")
    assert [(r.cot, r.score) for r in score_only.rows] == [("", 4), ("", 4)]
    assert score_only.rows[0].prompt == (REFERENCE / "no_feedback.prompt").read_text().format(**records[0])
    with pytest.raises(TrainingDataError, match="orig_"):
        prepare([str(shared_file("vicuna_eval.json"))], mode="score-only")


def test_unknown_format_and_missing_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "hi"}\n')
    with pytest.raises(TrainingDataError, match="unknown format"):
        prepare([str(path)])
    with pytest.raises(TrainingDataError, match="does not exist"):
        prepare([str(tmp_path / "missing.jsonl")])


def test_load_training_rows_validates(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "cot": "x " + DELIM, "score": 3}) + "\n"
                    + json.dumps({"prompt": "p", "cot": "no delimiter", "score": 3}) + "\n")
    with pytest.raises(TrainingDataError, match="line 2: field 'cot' must end with"):
        load_training_rows(path)
    assert [r.score for r in load_training_rows(path, limit=1)] == [3]
    # self-CoT generation only needs prompt and score
    assert len(load_training_rows(path, need_cot=False)) == 2
    path.write_text(json.dumps({"prompt": "p", "cot": "x " + DELIM, "score": 3.5}) + "\n")
    with pytest.raises(TrainingDataError, match="line 1: field 'score' must be an integer"):
        load_training_rows(path)


def test_recipes_carry_paper_hyperparameters():
    from tract_eval.training.config import build_config, load_recipe

    tract = build_config("tract")
    assert (tract.objective, tract.score_weight, tract.two_stage, tract.judge) == ("cot_raft", 1.0, True, "tract")
    assert (tract.lora_rank, tract.lora_target, tract.learning_rate) == (8, "all-linear", 1e-5)
    assert str(tract.lr_scheduler_type.value if hasattr(tract.lr_scheduler_type, "value")
               else tract.lr_scheduler_type) == "cosine"
    assert (tract.warmup_ratio, tract.num_train_epochs) == (0.1, 2)
    assert tract.per_device_train_batch_size * tract.gradient_accumulation_steps == 8
    raft = load_recipe("raft")
    assert raft["objective"] == "raft" and raft["judge"] == "raft" and raft["learning_rate"] == 1e-5
    assert load_recipe("ce_cot")["objective"] == "ce" and load_recipe("cot_raft")["two_stage"] is False


def test_recipe_errors(tmp_path):
    from tract_eval.training.config import build_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: cot_raft\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown training settings \['learning_rat'\]"):
        build_config(str(bad))
    bad.write_text("objective: mse\n")
    with pytest.raises(ValueError, match="objective must be one of"):
        build_config(str(bad))


def test_cli_flags_override_recipe_and_lambda_sweep(tmp_path):
    from tract_eval.training import cli

    args = cli.parse_train_args(["--recipe", "tract", "--out", str(tmp_path), "--lambda", "0.2,0.5,1,2,5,10",
                                 "--max-steps", "3", "--limit", "16", "--no-bf16", "--set", "lora_rank=4",
                                 "--lora_alpha", "8", "--report_to", "tensorboard", "--epochs", "3"])
    runs = cli._configs(args)
    assert [c.score_weight for c, _ in runs] == [0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
    assert [o.name for _, o in runs] == ["lambda-0.2", "lambda-0.5", "lambda-1", "lambda-2", "lambda-5", "lambda-10"]
    config = runs[0][0]
    assert (config.max_steps, config.limit, config.bf16, config.lora_rank) == (3, 16, False, 4)
    assert (config.lora_alpha, config.report_to, config.num_train_epochs) == (8, ["tensorboard"], 3.0)
    assert config.learning_rate == 1e-5  # from the recipe: flags not given do not override it
    # options after the step name reach the step too
    args = cli.parse_train_args(["stage1", "--recipe", "raft", "--out", str(tmp_path), "--lambda", "2"])
    (config, out), = cli._configs(args)
    assert (config.objective, config.score_weight, out) == ("raft", 2.0, tmp_path)
    assert args.func is cli._cmd_stage1


def test_train_flags_are_generated_from_train_config():
    from tract_eval.training import cli
    from tract_eval.training.config import TrainConfig

    flags = {s for a in cli.train_parser()._actions for s in a.option_strings}
    for name in TrainConfig.field_names():
        assert f"--{name}" in flags, name
    assert {"--data", "--epochs", "--batch-size", "--grad-accum", "--lambda", "--recipe", "--out"} <= flags


def test_top_level_cli_hands_train_its_arguments(monkeypatch):
    from tract_eval import cli as top
    from tract_eval.training import cli

    seen = {}
    monkeypatch.setattr(cli, "_cmd_recipe", lambda args: seen.setdefault("args", args) and 0)
    assert top.main(["-v", "train", "--recipe", "raft", "--max-steps", "2", "-q"]) == 0
    assert seen["args"].recipe == "raft" and seen["args"].max_steps == 2 and seen["args"].quiet == 1


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, tract_eval.training.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("mode, name", [("cot", "with_feedback.prompt"), ("score-only", "no_feedback.prompt")])
def test_training_prompts_are_tracts_bytes(mode, name):
    from tract_eval.training.data import training_prompt_template

    assert training_prompt_template(mode) == (REFERENCE / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("step", [[], ["stage1"], ["self-cot"], ["stage2"], ["prepare", "--source", "x", "--out", "y"]])
def test_verbosity_flags_are_taken_after_train_and_every_step(step):
    from tract_eval.training import cli

    assert cli.parse_train_args([*step, "-q"]).quiet == 1
    assert cli.parse_train_args([*step, "-vv"]).verbose == 2
