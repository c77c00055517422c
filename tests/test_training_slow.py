"""Training on the embedded SmolLM2: token layout against its tokenizer, loss going down, the two-stage recipe."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from tract_eval.backends.base import render_chat_with_tokenizer  # noqa: E402
from tract_eval.candidates import derive_score_candidates  # noqa: E402
from tract_eval.judges import build_judge  # noqa: E402
from tract_eval.models import EMBEDDED_NAME, resolve_model  # noqa: E402
from tract_eval.prompts import GradingFields, render_prompt  # noqa: E402
from tract_eval.training.data import TrainingRow, prepare, write_jsonl  # noqa: E402
from tract_eval.training.objectives import IGNORE, LeftPadCollator, encode_row  # noqa: E402
from tract_eval.training.pipeline import encode_rows, row_sample  # noqa: E402

pytestmark = pytest.mark.slow
DELIM = "So the overall score is"


@pytest.fixture(scope="module")
def shared_rows(data_dir) -> list[TrainingRow]:
    """Vicuna Bench annotation CoTs: one row per GPT-4 feedback (the delimiter appended: they never say it)."""
    return prepare([str(data_dir / "prometheus" / "vicuna_eval.json")], force_delimiter=True).rows


@pytest.fixture(scope="module")
def seed():
    from tract_eval.training.trainer import load_seed

    try:
        return load_seed(None)  # the process keeps one load; each call returns a fresh copy
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded model unavailable: {exc}")


def short_prompt(i: int) -> str:
    fields = GradingFields(
        instruction=f"Name a prime number greater than {i}.",
        response=f"{[3, 5, 7, 11][i % 4]} is one.",
        rubric="[Is the answer correct?]\nScore 1: Wrong.\nScore 2: Mostly wrong.\nScore 3: Partly right.\n"
               "Score 4: Right but terse.\nScore 5: Right and clear.",
        reference_answer="7",
    )
    return render_prompt("prometheus_absolute", fields)


def test_candidate_masking_matches_tokenizer(seed):
    _, tokenizer, _ = seed
    candidates = derive_score_candidates(tokenizer, DELIM, (1, 5))
    chat = "<|im_start|>user\nGrade this.<|im_end|>\n<|im_start|>assistant\n"
    cot = "The answer is fine. " + DELIM
    for objective in ("cot_raft", "ce", "raft"):
        feat = encode_row(tokenizer, chat, cot, 4, candidates, objective)
        ids, labels = feat["input_ids"], feat["labels"]
        score_id = candidates.sequences[3][0]
        assert tokenizer.decode([score_id]) == "4"
        assert ids[-2] == score_id and ids[-1] == tokenizer.eos_token_id
        assert tuple(ids[-3:-2]) == candidates.bridge_ids  # SmolLM2's lone space before the digit
        expected_text = chat + "The answer is fine. " + DELIM + " 4"  # the judge decides the layout
        assert tokenizer.decode(ids[:-1]) == expected_text
        prompt_len = len(tokenizer(chat, add_special_tokens=False)["input_ids"])
        assert labels[:prompt_len] == [IGNORE] * prompt_len
        if objective == "cot_raft":
            assert labels[-2] == IGNORE and labels[prompt_len:-2] == ids[prompt_len:-2] and labels[-1] == ids[-1]
        elif objective == "ce":
            assert labels[prompt_len:] == ids[prompt_len:]
        else:
            assert set(labels) == {IGNORE}


def test_training_input_is_the_judges_input(seed, shared_rows, data_dir):
    """On a benchmark-format row, encode_rows feeds exactly what `tract-eval run --judge tract` feeds before the CoT."""
    from tract_eval.benchmarks import load_benchmark

    _, tokenizer, _ = seed
    row = shared_rows[0]
    judge = build_judge("tract")
    _, features, _ = encode_rows([row], tokenizer, judge, "cot_raft", 8192)
    chat = judge.build_input_with(tokenizer, load_benchmark("vicuna", data_dir).samples[0])
    chat_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert features[0]["input_ids"][: len(chat_ids)] == chat_ids
    assert judge.grading_prompt(row_sample(row).fields) == row.prompt


def test_optimizer_steps_lower_the_loss(seed, shared_rows, tmp_path):
    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer, add_lora

    _, tokenizer, model = seed
    candidates = derive_score_candidates(tokenizer, DELIM, (1, 5))
    feedback = [r.cot for r in shared_rows[:2]]
    features = []
    for i, (cot, score) in enumerate(zip(feedback, (5, 1))):
        chat = render_chat_with_tokenizer(tokenizer, [{"role": "user", "content": short_prompt(i)}])
        features.append(encode_row(tokenizer, chat, cot, score, candidates, "cot_raft"))
    model = add_lora(model, 8, 16, 0.0, "all-linear")
    args = TrainConfig(output_dir=str(tmp_path), max_steps=4, learning_rate=2e-3, warmup_ratio=0.0,
                       per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
                       save_strategy="no", seed=0, reference_batch=2)
    collator = LeftPadCollator(tokenizer.pad_token_id)
    trainer = ScoreTrainer(model=model, args=args, train_dataset=features, data_collator=collator,
                           candidates=candidates, objective="cot_raft")
    batch = collator(features)

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return float(trainer.compute_loss(model, batch))

    before = loss_now()
    trainer.train()
    after = loss_now()
    assert after < before - 0.05, (before, after)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 4 and all("ce_loss" in e and "score_loss" in e for e in logged)


def test_two_stage_recipe_end_to_end(shared_rows, tmp_path):
    from tract_eval.backends import ScoreRequest, create_backend
    from tract_eval.training.config import build_config
    from tract_eval.training.pipeline import run_recipe

    # the four shortest prompts: one training step takes two rows (gradient accumulation 2), and the
    # self-CoT step, each row's prefill and decode on CPU, is most of this test's time
    rows = sorted(shared_rows, key=lambda r: len(r.prompt))[:4]
    data = tmp_path / "stage1.jsonl"
    write_jsonl(data, (r.to_dict() for r in rows))
    config = build_config("tract", {"max_steps": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
                                    "reference_batch": 2, "logging_steps": 1,
                                    "self_cot_max_new_tokens": 6, "save_steps": 1000})
    out = tmp_path / "run"
    summaries = run_recipe(config, data, out)

    stage1, stage2 = out / "stage1", out / "stage2"
    for stage in (stage1, stage2):
        source = resolve_model(str(stage))
        assert source.adapter == str(stage) and source.spec == str(stage)
        config_json = json.loads((stage / "adapter_config.json").read_text())
        assert config_json["base_model_name_or_path"] == EMBEDDED_NAME  # stage 2 starts from the seed again
        assert config_json["r"] == 8
    assert (stage1 / "merged" / "config.json").is_file()
    assert summaries["stage1"]["global_step"] == 1 and summaries["stage2"]["global_step"] == 1
    assert "ce_loss" in summaries["stage2"]["last_log"] and "score_loss" in summaries["stage2"]["last_log"]

    generated = [json.loads(line) for line in (out / "self_cot.jsonl").read_text().splitlines()]
    assert sorted(g["id"] for g in generated) == sorted(r.id for r in rows)  # in the order samples finished
    by_id = {g["id"]: g for g in generated}
    generated = [by_id[r.id] for r in rows]
    assert [g["score"] for g in generated] == [r.score for r in rows]  # gold scores, not the model's
    for g, r in zip(generated, rows):
        assert g["cot"].endswith(DELIM) and g["meta"]["annotation_cot"] == r.cot
        assert g["meta"]["generated_tokens"] <= 6
    assert any(g["cot"] != r.cot for g, r in zip(generated, rows))

    # rerunning skips every finished step
    again = run_recipe(config, data, out)
    assert again["stage2"]["train_seconds"] == summaries["stage2"]["train_seconds"]

    # the stage-2 adapter is a --model for any judge
    backend = create_backend("transformers", str(stage2))
    judge = build_judge("tract", backend=backend)
    sample = row_sample(rows[0])
    text = judge.build_input(sample)
    completion = backend.score([ScoreRequest(text, rows[0].cot, judge.candidates, judge.config.cut_marker)])[0]
    assert set(completion.candidate_logprobs) == {1, 2, 3, 4, 5}
