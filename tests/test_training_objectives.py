"""The CE / RAFT / CoT-RAFT losses against hand computations on a tiny Llama built from a config."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tract_eval.candidates import ScoreCandidates  # noqa: E402
from tract_eval.training.objectives import (  # noqa: E402
    IGNORE,
    LeftPadCollator,
    expected_score,
    loss_terms,
    objective_weights,
)

# a made-up vocabulary: ids 10..14 spell the scores 1..5 after the bridge id 9
CANDIDATES = ScoreCandidates(
    delimiter="So the overall score is", scores=(1, 2, 3, 4, 5), delimiter_ids=(5, 6, 7), bridge_ids=(9,),
    bridge_text=" ", sequences=((10,), (11,), (12,), (13,), (14,)),
)
EOS = 2


def tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=EOS, pad_token_id=0, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def feature(prompt: list[int], cot: list[int], score: int, objective: str) -> dict:
    """The layout encode_row builds, on made-up ids: prompt + cot + bridge + score token + EOS."""
    score_id = CANDIDATES.sequences[score - 1][0]
    response = cot + list(CANDIDATES.bridge_ids) + [score_id, EOS]
    if objective == "ce":
        labels = list(response)
    elif objective == "raft":
        labels = [IGNORE] * len(response)
    else:
        labels = cot + list(CANDIDATES.bridge_ids) + [IGNORE, EOS]
    return {"input_ids": prompt + response, "labels": [IGNORE] * len(prompt) + labels, "score": float(score),
            "response_length": len(response)}


def hand_terms(model, feat: dict, renormalize: bool = False):
    """Summed token CE, its token count and the expected score, from an unpadded forward pass and plain math."""
    ids = feat["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().tolist()
    ce, tokens = 0.0, 0
    for t in range(len(ids) - 1):
        target = feat["labels"][t + 1]
        if target == IGNORE:
            continue
        row = logits[t]
        log_z = math.log(sum(math.exp(v) for v in row))
        ce += log_z - row[target]
        tokens += 1
    row = logits[len(ids) - 3]  # predicts the score token (before EOS)
    cand = [row[s[0]] for s in CANDIDATES.sequences]
    if renormalize:
        z = sum(math.exp(v) for v in cand)
    else:
        z = sum(math.exp(v) for v in row)
    expected = sum(math.exp(v) / z * score for v, score in zip(cand, CANDIDATES.scores))
    return ce, tokens, expected


def make_trainer(tmp_path, model, objective: str, score_weight: float = 1.0, score_probs: str = "raw",
                 score_reduction: str = "mean", ce_weight: float = 1.0):
    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer

    args = TrainConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none")
    return ScoreTrainer(model=model, args=args, candidates=CANDIDATES, objective=objective,
                        score_weight=score_weight, score_probs=score_probs, score_reduction=score_reduction,
                        ce_weight=ce_weight)


ROWS = [([1, 20, 21, 22, 23], [24, 25, 5, 6, 7], 4), ([1, 26, 27], [28, 5, 6, 7], 2)]


@pytest.mark.parametrize("objective,score_weight,score_probs", [
    ("cot_raft", 1.0, "raw"), ("cot_raft", 2.5, "renormalized"), ("ce", 1.0, "raw"), ("raft", 1.0, "raw"),
])
def test_loss_equals_hand_computation(tmp_path, objective, score_weight, score_probs):
    model = tiny_model()
    features = [feature(p, c, s, objective) for p, c, s in ROWS]
    batch = LeftPadCollator(pad_token_id=0)(features)  # different lengths: exercises left padding
    trainer = make_trainer(tmp_path, model, objective, score_weight, score_probs)
    loss = float(trainer.compute_loss(model, batch))

    ce_sum, ce_tokens, se_sum = 0.0, 0, 0.0
    for feat, (_, _, score) in zip(features, ROWS):
        ce, tokens, expected = hand_terms(model, feat, renormalize=score_probs == "renormalized")
        ce_sum, ce_tokens, se_sum = ce_sum + ce, ce_tokens + tokens, se_sum + (expected - score) ** 2
    ce_weight, weight = objective_weights(objective, score_weight)
    hand = (ce_weight * ce_sum / ce_tokens if ce_tokens else 0.0) + weight * se_sum / len(ROWS)
    assert loss == pytest.approx(hand, rel=1e-4, abs=1e-5)
    if objective == "cot_raft":  # the score token is out of CE: 5 + 4 CoT tokens, bridge and EOS per row
        assert ce_tokens == (5 + 2) + (4 + 2)


def test_score_token_is_masked_only_for_cot_raft():
    for objective, masked in (("cot_raft", True), ("ce", False)):
        feat = feature([1, 20], [24, 5, 6, 7], 3, objective)
        assert feat["input_ids"][-2] == 12  # the candidate id of score 3
        assert (feat["labels"][-2] == IGNORE) is masked
        assert feat["labels"][-1] == EOS


def test_gradient_reaches_score_logits_through_raft_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 32, requires_grad=True)
    labels = torch.full((2, 6), IGNORE)  # RAFT: no CE tokens at all
    score_index = torch.tensor([3, 3])
    terms = loss_terms(logits, labels, score_index, torch.tensor([5.0, 1.0]), CANDIDATES, "raw")
    assert terms.ce_tokens == 0 and float(terms.ce_sum) == 0.0
    terms.se_sum.backward()
    grad = logits.grad
    candidate_ids = [s[0] for s in CANDIDATES.sequences]
    assert grad[:, 3, candidate_ids].abs().min() > 0  # every candidate logit is pushed
    # gold 5 pulls probability towards the high scores: the "5" logit goes up (negative gradient)
    assert grad[0, 3, 14] < 0 and grad[1, 3, 10] < 0
    other_positions = [i for i in range(6) if i != 3]
    assert grad[:, other_positions].abs().max() == 0  # only the score position is read


def test_renormalized_gradient_stays_on_candidates():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 32, requires_grad=True)
    value = expected_score(logits[:, 2], CANDIDATES, "renormalized")
    value.sum().backward()
    candidate_ids = [s[0] for s in CANDIDATES.sequences]
    others = [i for i in range(32) if i not in candidate_ids]
    assert logits.grad[0, 2, others].abs().max() == 0
    assert logits.grad[0, 2, candidate_ids].abs().min() > 0


def test_expected_score_raw_versus_renormalized():
    logits = torch.full((1, 32), -1e4)
    logits[0, 11] = 0.0  # all candidate mass on "2"
    logits[0, 30] = 0.0  # as much on a non-candidate token
    assert float(expected_score(logits, CANDIDATES, "renormalized")) == pytest.approx(2.0)
    assert float(expected_score(logits, CANDIDATES, "raw")) == pytest.approx(1.0)  # 0.5 * 2


def test_multi_token_candidates_are_refused():
    two = ScoreCandidates(delimiter="d", scores=(1, 10), delimiter_ids=(5,), bridge_ids=(), bridge_text="",
                          sequences=((10,), (10, 11)))
    with pytest.raises(ValueError, match="one token per score"):
        expected_score(torch.zeros(1, 32), two)


def test_gradient_accumulation_normalises_over_the_whole_window(tmp_path):
    """Two micro-batches of one row each give the same loss sum as the pair in one batch."""
    model = tiny_model()
    features = [feature(p, c, s, "cot_raft") for p, c, s in ROWS]
    trainer = make_trainer(tmp_path, model, "cot_raft")
    whole = float(trainer.compute_loss(model, LeftPadCollator(0)(features)))
    model.train()  # the window counts apply while training
    singles = [LeftPadCollator(0)([f]) for f in features]
    tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in singles)
    trainer._window = (tokens, len(singles))
    parts = sum(float(trainer.compute_loss(model, b)) for b in singles)
    assert parts == pytest.approx(whole, rel=1e-5)


def test_checkpoints_resume(tmp_path):
    """A LoRA run stopped after its first checkpoint continues from it (same step count, same final weights)."""
    from transformers.trainer_utils import get_last_checkpoint

    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer, add_lora

    features = [feature(p, c, s, "cot_raft") for p, c, s in ROWS] * 2

    def run(out, max_steps, resume=None):
        model = add_lora(tiny_model(), 4, 8, 0.0, "all-linear")
        args = TrainConfig(output_dir=str(out), max_steps=max_steps, learning_rate=1e-2, warmup_ratio=0.0,
                           per_device_train_batch_size=1, gradient_accumulation_steps=2, save_steps=1,
                           reference_batch=2, logging_steps=1, bf16=False, use_cpu=True, seed=0, lr_scheduler_type="constant")
        trainer = ScoreTrainer(model=model, args=args, train_dataset=features, data_collator=LeftPadCollator(0),
                               candidates=CANDIDATES, objective="cot_raft")
        trainer.train(resume_from_checkpoint=resume)
        return trainer, {k: v.detach().clone() for k, v in model.named_parameters() if "lora" in k}

    straight, weights = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    checkpoint = get_last_checkpoint(str(tmp_path / "b"))
    assert checkpoint.endswith("checkpoint-1")
    resumed, resumed_weights = run(tmp_path / "b", 2, resume=checkpoint)
    assert resumed.state.global_step == 2
    for name, value in weights.items():
        assert torch.allclose(value, resumed_weights[name], atol=1e-6), name


def _hand(model, features):
    terms = [hand_terms(model, f) for f in features]
    ce_sum = sum(t[0] for t in terms)
    tokens = sum(t[1] for t in terms)
    squared = [(t[2] - f["score"]) ** 2 for t, f in zip(terms, features)]
    return ce_sum, tokens, squared


@pytest.mark.parametrize("score_reduction", ["mean", "reference"])
@pytest.mark.parametrize("ce_weight", [1.0, 0.0])
def test_score_reductions_over_an_accumulated_batch_equal_hand_computations(tmp_path, score_reduction, ce_weight):
    """Two micro-batches of one row (per-device batch 1, 2 accumulation steps), summed as the Trainer does.

    mean:      ce_weight * CE_sum / CE_tokens + lambda * (se_1 + se_2) / 2
    reference: ce_weight * CE_sum / CE_tokens + lambda * (se_1 + se_2) / 2**2  (compute_raft_loss on the
               released layout, the window as one micro-batch: mse mean over it / its size; issue 18
               replaced the per-micro-batch sum se_1 / 1**2 + se_2 / 1**2, 4x the released weight here)
    """
    model = tiny_model()
    features = [feature(p, c, s, "cot_raft") for p, c, s in ROWS]
    trainer = make_trainer(tmp_path, model, "cot_raft", score_weight=2.0, score_reduction=score_reduction,
                           ce_weight=ce_weight)
    model.train()
    singles = [LeftPadCollator(0)([f]) for f in features]
    trainer._window = (sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in singles), len(singles))
    trainer._local_window = trainer._window  # one process
    loss = sum(float(trainer.compute_loss(model, b)) for b in singles)
    model.eval()
    ce_sum, tokens, squared = _hand(model, features)
    score_term = sum(squared) / len(squared) if score_reduction == "mean" else sum(squared) / len(squared) ** 2
    assert loss == pytest.approx(ce_weight * ce_sum / tokens + 2.0 * score_term, rel=1e-4, abs=1e-5)


def test_reference_reduction_divides_a_micro_batch_by_its_size_twice(tmp_path):
    model = tiny_model()
    features = [feature(p, c, s, "raft") for p, c, s in ROWS]
    trainer = make_trainer(tmp_path, model, "raft", score_reduction="reference")
    loss = float(trainer.compute_loss(model, LeftPadCollator(0)(features)))
    _, _, squared = _hand(model, features)
    assert loss == pytest.approx((sum(squared) / 2) / 2, rel=1e-4, abs=1e-6)  # mse mean, then / batch size


def test_ce_weight_zero_leaves_only_the_score_term():
    assert objective_weights("cot_raft", 1.5, ce_weight=0.0) == (0.0, 1.5)
    assert objective_weights("ce", 1.5, ce_weight=0.5) == (0.5, 0.0)
    assert objective_weights("raft", 1.5, ce_weight=1.0) == (0.0, 1.5)


def test_validation_split_is_seeded_and_sized_as_tract():
    from tract_eval.training.data import TrainingRow
    from tract_eval.training.pipeline import split_validation

    rows = [TrainingRow(str(i), "p", "c", 3) for i in range(100)]
    train, held = split_validation(rows, 0.05, seed=0)
    assert len(held) == 5 and len(train) == 95 and {r.id for r in train} | {r.id for r in held} == {str(i) for i in range(100)}
    assert [r.id for r in split_validation(rows, 0.05, seed=0)[1]] == [r.id for r in held]
    assert split_validation(rows[:10], 0.05, seed=0) == (rows[:10], [])


def test_held_out_rows_are_evaluated_during_training(tmp_path):
    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer, add_lora

    features = [feature(p, c, s, "cot_raft") for p, c, s in ROWS]
    args = TrainConfig(output_dir=str(tmp_path), max_steps=2, learning_rate=1e-2, warmup_ratio=0.0,
                       per_device_train_batch_size=1, gradient_accumulation_steps=1, logging_steps=1,
                       save_strategy="no", bf16=False, use_cpu=True, validation_ratio=0.5, reference_batch=1)
    assert args.eval_strategy == "steps" and args.prediction_loss_only
    trainer = ScoreTrainer(model=add_lora(tiny_model(), 4, 8, 0.0, "all-linear"), args=args,
                           train_dataset=features[:1], eval_dataset=features[1:], data_collator=LeftPadCollator(0),
                           candidates=CANDIDATES, objective="cot_raft")
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2 and all(math.isfinite(e["eval_loss"]) for e in evals)
