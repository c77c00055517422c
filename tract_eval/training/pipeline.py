"""Training runs: one stage on prepared rows, self-generated CoTs, and TRACT's two-stage recipe.

Layout of a two-stage run in ``OUT``::

    OUT/stage1/            LoRA adapter trained on annotation CoTs (+ checkpoints/, training_summary.json)
    OUT/stage1/merged/     the adapter merged into the seed weights (generates the stage-2 CoTs)
    OUT/self_cot.jsonl     one self-generated CoT per training row, with the row's gold score
    OUT/stage2/            LoRA adapter on the SEED model, trained on self_cot.jsonl: the TRACT judge

A one-stage run writes its adapter to ``OUT`` itself. Every adapter folder is a
valid ``--model`` for any judge. Each step is skipped when its output is
complete and resumed (from the last checkpoint, or the last saved CoT) when not.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path

from ..benchmarks import Sample
from ..judges import Judge, build_judge, load_judge_card
from ..judges.variants import variant_type
from ..prompts import parse_prometheus_prompt, reference_strip
from ..identity import RunIdentity, judge_identity
from ..records import Prediction
from ..redaction import redact
from ..runner import judge_pending
from ..store import RunStore
from .data import TrainingDataError, TrainingRow, load_training_rows
from .objectives import LeftPadCollator, encode_llama_factory_row, encode_row, resolve_training_template

log = logging.getLogger(__name__)

SUMMARY = "training_summary.json"


def stage_complete(out_dir: str | Path) -> bool:
    path = Path(out_dir) / SUMMARY
    return path.is_file() and json.loads(path.read_text()).get("complete", False)


def row_sample(row: TrainingRow) -> Sample:
    """A training row as the sample a judge grades: its prompt is used verbatim (TRACT generates
    stage-2 CoTs from its training prompts), its sections parsed only to check it."""
    try:
        fields = parse_prometheus_prompt(row.prompt)
    except ValueError as exc:
        raise TrainingDataError(f"training row {row.id}: field 'prompt' is not a Prometheus grading prompt: {exc}")
    return Sample(row.id, dataclasses.replace(fields, prompt_text=row.prompt), float(row.score), dict(row.meta))


def encode_rows(rows: list[TrainingRow], tokenizer, judge: Judge, objective: str, max_length: int,
                template: str = "auto"):
    """Token features for the rows that fit in ``max_length``; the ids of the others.

    ``template`` (objectives.TRAINING_TEMPLATES): by default LLaMA-Factory's layout for the tokenizer's
    family (Mistral, Llama-3), as the reference trained: the row's prompt (right-stripped as the judge
    reads it) as the user turn, the CoT and score as the response. ``chat-template`` (and ``auto`` on
    other tokenizers): the judge's chat layout (``Judge.training_input_with``: the same template, system
    turn and stripping as ``tract-eval run``), then the CoT; a score-only judge's rows carry no CoT, the
    score follows the bridge at the first assistant token.
    """
    cfg = judge.config
    candidates = judge.candidates_with(tokenizer)
    layout = resolve_training_template(template, tokenizer)
    features, too_long = [], []
    for row in rows:
        cot = row.cot if judge.variant.writes_cot else ""
        try:
            if layout == "chat-template":
                chat = judge.training_input_with(tokenizer, row.prompt)
                feature = encode_row(tokenizer, chat, cot, row.score, candidates, objective, cfg.cut_marker)
            else:
                feature = encode_llama_factory_row(tokenizer, layout, reference_strip(row.prompt), cot, row.score,
                                                   candidates, objective, cfg.cut_marker, cfg.system_prompt)
        except ValueError as exc:
            raise ValueError(f"training row {row.id}: {exc}") from exc
        if len(feature["input_ids"]) > max_length:
            too_long.append(row.id)
            continue
        features.append(feature)
    return candidates, features, too_long


def split_validation(rows: list[TrainingRow], ratio: float, seed: int) -> tuple[list[TrainingRow], list[TrainingRow]]:
    """(training rows, held-out rows): ``int(len * ratio)`` rows after a seeded shuffle, as TRACT
    holds out 5% (``--validation-ratio 0.05``)."""
    count = int(len(rows) * ratio)
    if not count:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[-count:])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def train_stage(config, rows: list[TrainingRow], out_dir: str | Path, merged_dir: str | Path | None = None) -> dict:
    """Train a LoRA adapter on ``rows`` from ``config.model``; returns the run summary (also in OUT/training_summary.json)."""
    from transformers.trainer_utils import get_last_checkpoint

    from .config import config_dict
    from .trainer import ScoreTrainer, add_lora, load_seed, save_adapter, save_merged

    out = Path(out_dir)
    judge = build_judge(config.judge)  # builds inputs only: no backend is created
    started = time.perf_counter()
    source, tokenizer, model = load_seed(config.model)
    load_seconds = time.perf_counter() - started
    rows, validation = split_validation(rows, config.validation_ratio, config.seed)
    template = config.training_template
    candidates, features, too_long = encode_rows(rows, tokenizer, judge, config.objective, config.max_length, template)
    _, eval_features, _ = encode_rows(validation, tokenizer, judge, config.objective, config.max_length, template)
    if config.validation_ratio and not eval_features:
        log.warning("validation_ratio %s holds out no row of %d; training without a held-out set",
                    config.validation_ratio, len(rows))
    if too_long:
        log.warning("%d of %d rows are longer than max_length=%d tokens and are left out: %s",
                    len(too_long), len(rows), config.max_length, ", ".join(too_long[:10]))
    if not features:
        raise ValueError(f"no training row fits in max_length={config.max_length} tokens")
    model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target)
    checkpoints = out / "checkpoints"
    args = dataclasses.replace(config, output_dir=str(checkpoints), **(
        {} if eval_features else {"validation_ratio": 0.0, "eval_strategy": "no"}))
    trainer = ScoreTrainer(
        model=model, args=args, train_dataset=features, eval_dataset=eval_features or None,
        data_collator=LeftPadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                      else tokenizer.eos_token_id),
        candidates=candidates, objective=config.objective, score_weight=config.score_weight,
        score_probs=config.score_probs, ce_weight=config.ce_weight, score_reduction=config.score_reduction,
    )
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        log.warning("resuming %s from %s", out, resume)
    train_started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - train_started
    save_adapter(model, out, source)
    if merged_dir is not None:
        save_merged(model, tokenizer, merged_dir)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "complete": True,
        "adapter": str(out),
        "merged": str(merged_dir) if merged_dir is not None else None,
        "base_model": source.spec,
        "judge": config.judge,
        "objective": config.objective,
        "score_weight": config.score_weight,
        "score_probs": config.score_probs,
        "ce_weight": config.ce_weight,
        "score_reduction": config.score_reduction,
        "training_template": resolve_training_template(template, tokenizer),
        "rows": len(rows),
        "validation_rows": len(validation),
        "rows_used": len(features),
        "rows_too_long": too_long,
        "candidates": candidates.to_dict(),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_log": history[0] if history else None,
        "last_log": history[-1] if history else None,
        "log_history": trainer.state.log_history,
        "resumed_from": resume,
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "bf16": config.bf16,
        "device": str(config.device),
        "config": config_dict(config),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def generate_self_cots(model: str | None, rows: list[TrainingRow], judge_name: str, out_path: str | Path,
                       max_new_tokens: int | None = None, batch_size: int = 8) -> list[TrainingRow]:
    """One CoT per row from ``model``, written by the judge itself (its prompt and sampling settings).

    The judge's score after the CoT is discarded: the row keeps its gold score.
    Rows are appended to ``out_path`` as each finishes, and rows already there
    are not generated again. ``self_cot.manifest.json`` beside it records the judge and model that
    wrote them: resuming with another is refused naming the difference.
    """
    with self_cot_store(out_path) as store:
        pending = store.pending(rows)
        if pending:
            judge = build_judge(judge_name, model=model, max_new_tokens=max_new_tokens, n_cot=1)
            if judge.config.protocol != "cot-rail":
                raise ValueError(f"judge {judge.name} does not write a CoT before a RAIL readout; "
                                 "self-generated CoTs need one (e.g. --judge tract)")
            identity = RunIdentity(*judge_identity(judge.config), bench={})  # the rows are resumed by id
            store.claim(identity, lambda: {"identity": identity.to_dict(), "fingerprint": identity.fingerprint,
                                           "judge": redact(judge.config.to_dict()), "model_note": judge.model_note,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            store.save_manifest()
            save = _self_cot_saver(judge, {row.id: row for row in pending}, store.append)
            # the runner's loop; each CoT fsynced as it finishes
            judge_pending(judge, [row_sample(row) for row in pending], save, batch_size=batch_size)
        return [TrainingRow(**store.rows[row.id]) for row in rows]


def self_cot_store(out_path: str | Path) -> RunStore:
    """``self_cot.jsonl`` (one training row per line, by id), its manifest (a file written before manifests
    were is kept) and its lock."""
    out_path = Path(out_path)
    return RunStore.file(out_path, "--out", manifest=out_path.with_name(out_path.stem + ".manifest.json"),
                         unrecorded_ok=True)


def _self_cot_saver(judge: Judge, by_id: dict[str, TrainingRow], write):
    """A judged row as the training row it was generated for: the CoT, cut as at inference, in place of
    the annotation's (kept in ``meta``), the gold score kept."""
    delimiter, bridge = judge.config.delimiter, judge.candidates.bridge_text

    def save(prediction: Prediction) -> None:
        row, text = by_id[prediction.id], prediction.cots[0]
        cot = text[: len(text) - len(bridge)] if bridge and text.endswith(bridge) else text
        if not cot.endswith(delimiter):
            raise RuntimeError(f"row {row.id}: the generated CoT does not end with {delimiter!r}")
        write(dataclasses.replace(row, cot=cot, meta={
            **row.meta,
            "annotation_cot": row.cot,
            "finish_reason": prediction.finish_reasons[0],
            "cut": prediction.cut[0],
            "generated_tokens": prediction.generated_tokens,
            "discarded_prediction": prediction.prediction,
        }).to_dict())

    return save


def run_recipe(config, data: str | Path, out_dir: str | Path) -> dict:
    """One stage, or TRACT's two stages when ``config.two_stage``; returns {step: summary}."""
    out = Path(out_dir)
    judge = load_judge_card(config.judge)
    rows = load_training_rows(data, judge.delimiter, judge.scale, config.limit,
                              need_cot=variant_type(judge).cuts_cot())
    if not config.two_stage:
        return {"model": run_stage(config, rows, out, merged_dir=out / "merged" if config.save_merged else None)}
    stage1 = out / "stage1"
    summaries = {"stage1": run_stage(config, rows, stage1, merged_dir=stage1 / "merged")}
    merged = stage1 / "merged"
    started = time.perf_counter()
    self_rows = generate_self_cots(str(merged if merged.is_dir() else stage1), rows, config.judge,
                                   out / "self_cot.jsonl", config.self_cot_max_new_tokens, config.self_cot_batch_size)
    summaries["self_cot"] = {"rows": len(self_rows), "file": str(out / "self_cot.jsonl"),
                             "seconds": round(time.perf_counter() - started, 2)}
    summaries["stage2"] = run_stage(config, self_rows, out / "stage2")
    return summaries


def run_stage(config, rows, out: Path, merged_dir: Path | None = None) -> dict:
    if stage_complete(out):  # a missing merged copy is fine: the adapter folder generates too, only slower to load
        log.warning("%s is complete; skipping (delete it to train again)", out)
        return json.loads((out / SUMMARY).read_text())
    return train_stage(config, rows, out, merged_dir)
