"""``score_reduction: reference`` against TRACT's ``compute_raft_loss``, re-implemented here from its source.

Reference: d223302/TRACT @ dcb7a649 ``finetuning_utils/cot_with_raft/custom_loss.py:compute_raft_loss``
(lines 38-128), run by LLaMA-Factory @ c6e3c14a (pinned in ``envs/train_requirements.txt``) under
transformers 4.46.1, with ``finetuning_utils/config/cot_raft_mistral.yaml``: per-device batch 8, gradient
accumulation 1. Trainer's accumulation scaling there (for the record of what other splits would do):
``trainer.py`` 4.46.1 ``training_step`` multiplies the loss by the accumulation steps and
``accelerator.backward`` divides it again, and ``cot_with_raft/trainer.py:103`` (LLaMA-Factory's 4.46 fix)
divides by the steps for models whose forward takes no ``loss_kwargs`` (Mistral in 4.46.1): an optimizer
step follows the mean of the micro-batches' ``compute_raft_loss``.
"""
from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from test_training_objectives import CANDIDATES, EOS, feature, tiny_model  # noqa: E402
from tract_eval.errors import ConfigError  # noqa: E402
from tract_eval.training.objectives import IGNORE, LeftPadCollator  # noqa: E402

SCORE_IDS = [s[0] for s in CANDIDATES.sequences]  # the reference's score_to_indices (Mistral: 28740...)
SCORE_GRID = [1.0, 2.0, 3.0, 4.0, 5.0]


def rows(count: int = 8, seed: int = 0):
    rng = random.Random(seed)
    return [([1] + [rng.randrange(15, 32) for _ in range(rng.randrange(2, 7))],
             [rng.randrange(15, 32) for _ in range(rng.randrange(1, 6))] + [5, 6, 7], rng.randrange(1, 6))
            for _ in range(count)]


def reference_batch(features: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaMA-Factory's training batch: right padding, labels = the response ids with the score token kept
    (compute_raft_loss finds it as the second-to-last label and masks it itself)."""
    width = max(len(f["input_ids"]) for f in features)
    ids, labels, mask = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append(f["input_ids"] + [0] * pad)
        labels.append(f["labels"] + [IGNORE] * pad)
        mask.append([1] * len(f["input_ids"]) + [0] * pad)
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)


def compute_raft_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int) -> tuple[torch.Tensor, ...]:
    """custom_loss.py:compute_raft_loss, step by step: (total, lm_loss, score_loss)."""
    num_seq = labels.size(0)
    positions = [int((row != IGNORE).nonzero(as_tuple=True)[0][-2]) for row in labels]  # extract_label_from_sequence
    score_pos = torch.tensor(positions)
    score_labels = torch.tensor([SCORE_GRID[SCORE_IDS.index(int(labels[i, p]))] for i, p in enumerate(positions)])
    labels = labels.clone()
    labels[torch.arange(num_seq), score_pos] = IGNORE
    # ForCausalLMLoss with num_items_in_batch: summed CE over shifted labels / (num_items_in_batch - num_seq)
    shift_logits = logits[..., :-1, :].float().reshape(-1, logits.size(-1))
    shift_labels = labels[..., 1:].reshape(-1)
    lm_loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    lm_loss = lm_loss / (num_items_in_batch - num_seq)
    probs = torch.softmax(logits[torch.arange(num_seq), score_pos - 1, :].float(), dim=-1)
    weighted = (probs[..., SCORE_IDS] * torch.tensor(SCORE_GRID)).sum(-1)
    score_loss = torch.nn.functional.mse_loss(weighted, score_labels, reduction="mean") / num_seq
    return lm_loss + 1.0 * score_loss, lm_loss, score_loss


def reference_step(model, features: list[dict], per_device: int) -> tuple[torch.Tensor, ...]:
    """The loss one optimizer step of the reference follows at ``per_device`` x ``len / per_device``:
    num_items_in_batch counted over the whole window (trainer.py 4.46.1 get_batch_samples), each
    micro-batch's compute_raft_loss, the mean over the accumulation steps (see the module docstring)."""
    micro = [features[i:i + per_device] for i in range(0, len(features), per_device)]
    num_items = sum(int((reference_batch(m)[1][..., 1:] != IGNORE).sum()) for m in micro)
    parts = []
    for m in micro:
        ids, labels, mask = reference_batch(m)
        parts.append(compute_raft_loss(model(input_ids=ids, attention_mask=mask).logits, labels, num_items))
    steps = len(micro)
    return tuple(sum(p[k] for p in parts) / steps for k in range(3))  # (total, lm, score), with grad


def ours(trainer, model, features: list[dict], per_device: int) -> torch.Tensor:
    """tract-eval's loss for one window split into micro-batches of ``per_device``, summed as Trainer does
    (``loss_is_scaled_for_ga``: no further division); the window counts set by Trainer's own hook."""
    collate = LeftPadCollator(0)
    micro = [collate(features[i:i + per_device]) for i in range(0, len(features), per_device)]
    trainer.get_batch_samples(iter(micro), len(micro), "cpu")
    return sum(trainer.compute_loss(model, batch) for batch in micro)


def make(tmp_path, model, **config):
    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer

    args = TrainConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", **config)
    return ScoreTrainer(model=model, args=args, candidates=CANDIDATES, objective="cot_raft",
                        score_reduction=args.score_reduction)


@pytest.mark.parametrize("per_device,accumulation", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_every_split_gives_the_released_layouts_loss(tmp_path, per_device, accumulation):
    model = tiny_model()
    model.train()
    data = rows()
    released, _, _ = reference_step(model, [feature(p, c, s, "ce") for p, c, s in data], per_device=8)
    trainer = make(tmp_path, model, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
    loss = ours(trainer, model, [feature(p, c, s, "cot_raft") for p, c, s in data], per_device)
    assert float(loss.detach()) == pytest.approx(float(released.detach()), rel=1e-5)


def test_the_reference_itself_weighs_the_score_term_by_the_split(tmp_path):
    """Why the split is pinned: compute_raft_loss run at 1 x 8 is another objective (the score term
    8x heavier, the LM term 8x lighter after the mean over steps: 64x the released score weight)."""
    model = tiny_model()
    model.train()
    data = [feature(p, c, s, "ce") for p, c, s in rows()]
    with torch.no_grad():
        _, lm_8x1, score_8x1 = reference_step(model, data, per_device=8)
        _, lm_1x8, score_1x8 = reference_step(model, data, per_device=1)
    assert float(score_1x8) == pytest.approx(8 * float(score_8x1), rel=1e-5)
    items = sum(int((torch.tensor(f["labels"][1:]) != IGNORE).sum()) for f in data)
    # 1 x 8: each micro-batch's CE over (items - 1), then the mean over 8 steps; 8 x 1: CE over (items - 8)
    assert float(lm_1x8) * 8 * (items - 1) == pytest.approx(float(lm_8x1) * (items - 8), rel=1e-5)


def test_one_trainer_step_follows_the_released_gradient(tmp_path):
    """Trainer's own accumulation (this transformers) at 4 x 2: one SGD step moves the weights by
    -lr * grad of compute_raft_loss on the 8 rows at 8 x 1."""
    data = rows()
    reference_model = tiny_model()
    reference_model.train()
    loss, _, _ = reference_step(reference_model, [feature(p, c, s, "ce") for p, c, s in data], per_device=8)
    loss.backward()
    expected = {n: p.detach() - 0.5 * p.grad for n, p in reference_model.named_parameters()}

    from tract_eval.training.config import TrainConfig
    from tract_eval.training.trainer import ScoreTrainer

    model = tiny_model()
    args = TrainConfig(output_dir=str(tmp_path), max_steps=1, learning_rate=0.5, optim="sgd", weight_decay=0.0,
                       max_grad_norm=0.0, warmup_ratio=0.0, lr_scheduler_type="constant", logging_steps=1,
                       per_device_train_batch_size=4, gradient_accumulation_steps=2, save_strategy="no",
                       bf16=False, use_cpu=True, report_to="none")
    trainer = ScoreTrainer(model=model, args=args, train_dataset=[feature(p, c, s, "cot_raft") for p, c, s in data],
                           data_collator=LeftPadCollator(0), candidates=CANDIDATES, objective="cot_raft",
                           score_reduction="reference")
    trainer.train()
    for name, value in model.named_parameters():
        assert torch.allclose(value.detach(), expected[name], atol=2e-6), name


@pytest.mark.parametrize("per_device,accumulation", [(2, 2), (8, 2), (3, 3)])
def test_splits_that_cannot_match_are_refused_naming_the_released_layout(tmp_path, per_device, accumulation):
    from tract_eval.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"released layout, 8 sequences per device .*cot_raft_mistral.yaml 8 x 1"):
        TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=per_device,
                    gradient_accumulation_steps=accumulation, bf16=False, use_cpu=True)
    # the same split is fine where the split cannot matter: mean reduction, or CE alone
    TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                score_reduction="mean", bf16=False, use_cpu=True)
    TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                objective="ce", bf16=False, use_cpu=True)


def test_recipes_use_the_released_layout():
    from tract_eval.training.config import build_config

    for recipe in ("tract", "cot_raft", "raft", "cot_raft_no_ce"):
        config = build_config(recipe)
        assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (8, 1), recipe
        assert config.reference_batch == 8 and config.score_reduction == "reference"
    llama = build_config("tract", {"reference_batch": 4, "per_device_train_batch_size": 2,
                                   "gradient_accumulation_steps": 2})  # cot_raft_llama.yaml's 4 x 1, split
    assert llama.reference_batch == 4


def test_eos_follows_the_score(tmp_path):
    """The layout the re-implementation relies on: the score is the second-to-last label, EOS the last."""
    f = feature([1, 20], [21, 5, 6, 7], 3, "ce")
    assert f["labels"][-2] == SCORE_IDS[2] and f["labels"][-1] == EOS
