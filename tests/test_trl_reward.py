"""``tract_eval.integrations.trl.TractReward``: TRL's reward-function signature, and two GRPO steps with it."""
from __future__ import annotations

import math

import pytest

import tract_eval
from tract_eval.errors import ConfigError
from tract_eval.integrations.trl import TractReward, message_text

RUBRIC = "Is the response polite?"
NEW_TOKENS = 4


def test_reads_plain_and_conversational_texts():
    assert message_text("plain") == "plain"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert message_text(chat, "user") == "Hi?"
    assert message_text([{"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}],
                        "assistant") == "Hello"
    with pytest.raises(ConfigError):
        message_text(3)


def test_refuses_settings_that_do_not_apply():
    with pytest.raises(ConfigError, match="server's command line"):
        TractReward(judge="tract", url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="api_key_env is for a server"):
        TractReward(rubric="x", api_key_env="HOME")
    with pytest.raises(ConfigError, match="no rubric"):
        TractReward()(prompts=["p"], completions=["c"])


def test_empty_completions_get_no_reward_and_are_not_judged():
    logged = {}
    reward = TractReward(rubric=RUBRIC)
    reward._grade = lambda rows: pytest.fail("nothing to judge")  # an empty completion never reaches a model
    out = reward(prompts=["Say hi.", "Say hi."], completions=["", "  "], completion_ids=[[], []],
                 log_extra=lambda column, values: logged.__setitem__(column, values))
    assert out == [None, None] and logged == {"tract_status": ["empty", "empty"]}


def _tiny_policy(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.mark.slow
def test_two_grpo_steps_log_the_rewards_grade_many_gives(tmp_path, embedded_tokenizer):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = embedded_tokenizer
    policy = _tiny_policy(tokenizer)
    dataset = Dataset.from_dict({"prompt": ["Greet the user.", "Say thank you."],
                                 "rubric": [RUBRIC, "Is the response grateful?"]})
    snapshots = []

    class Snapshot(TrainerCallback):  # what the trainer logged for each step's completions
        def on_step_end(self, args, state, control, **kwargs):
            logs = trainer._logs
            snapshots.append({"prompt": list(logs["prompt"]), "completion": list(logs["completion"]),
                              "reward": list(logs["rewards"]["tract_reward"])})

    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                        max_completion_length=6, max_steps=2, logging_steps=1, learning_rate=1e-4, report_to=[],
                        save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
    reward = TractReward(judge="tract", max_new_tokens=NEW_TOKENS)  # the rubric comes from the dataset column
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Snapshot()])
    trainer.train()

    assert len(snapshots) == 2
    logged_means = [entry["rewards/tract_reward/mean"] for entry in trainer.state.log_history
                    if "rewards/tract_reward/mean" in entry]
    assert len(logged_means) == 2
    rubrics = dict(zip(dataset["prompt"], dataset["rubric"]))
    compared = 0
    for step, snap in enumerate(snapshots):
        rows = [{"instruction": p, "response": c, "rubric": rubrics[p]} for p, c in zip(snap["prompt"], snap["completion"])]
        judged = [i for i, row in enumerate(rows) if row["response"].strip()]
        expected = tract_eval.grade_many([rows[i] for i in judged], judge="tract", max_new_tokens=NEW_TOKENS)
        print(f"step {step + 1}: logged {snap['reward']} / grade_many {[g.score for g in expected]}")
        for i, grade in zip(judged, expected):
            assert math.isclose(snap["reward"][i], grade.score, abs_tol=1e-6)
            compared += 1
        assert all(math.isnan(snap["reward"][i]) for i in range(len(rows)) if i not in judged)
        scored = [r for r in snap["reward"] if not math.isnan(r)]
        assert math.isclose(logged_means[step], sum(scored) / len(scored), abs_tol=1e-5)
    assert compared >= 2
