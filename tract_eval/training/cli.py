"""``tract-eval train``: prepare data, run a recipe, or run TRACT's steps one by one.

    tract-eval train prepare --source prometheus-eval/Feedback-Collection --out data/stage1.jsonl
    tract-eval train --recipe training/tract.yaml --data data/stage1.jsonl --out models/tract
    tract-eval train stage1 | self-cot | stage2 --recipe tract --data data/stage1.jsonl --out models/tract

Heavy libraries (torch, transformers) load inside the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..errors import ConfigError

DEFAULT_RECIPE = "tract"
DEFAULT_OUT = "models/tract"

# flag -> TrainConfig field (CLI flags override the recipe)
_OVERRIDES = {
    "model": "model",
    "data": "train_file",
    "judge": "judge",
    "objective": "objective",
    "limit": "limit",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "max_length": "max_length",
    "seed": "seed",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "self_cot_max_new_tokens": "self_cot_max_new_tokens",
    "ce_weight": "ce_weight",
    "score_reduction": "score_reduction",
    "validation_ratio": "validation_ratio",
}


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: options may come before or after the step name without a step's defaults erasing them
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--recipe", help=f"recipe name in training/ or a YAML path (default {DEFAULT_RECIPE})")
    common.add_argument("--model", help="seed model: HF id, folder or .gguf (default: the embedded SmolLM2)")
    common.add_argument("--data", help="prepared training JSONL (tract-eval train prepare)")
    common.add_argument("--out", help=f"output folder (default {DEFAULT_OUT})")
    common.add_argument("--judge", help="judge card the model is trained for (system prompt, delimiter, scale)")
    common.add_argument("--objective", choices=["ce", "raft", "cot_raft"])
    common.add_argument("--lambda", dest="lambdas",
                        help="weight of the score term; a comma list (0.2,0.5,1,2,5,10) runs one training per value")
    common.add_argument("--limit", type=int, help="use the first N rows")
    common.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    common.add_argument("--learning-rate", type=float)
    common.add_argument("--epochs", type=float)
    common.add_argument("--batch-size", type=int, help="per-device batch size")
    common.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    common.add_argument("--max-length", type=int, help="rows with more tokens are left out and reported")
    common.add_argument("--seed", type=int)
    common.add_argument("--logging-steps", type=int)
    common.add_argument("--save-steps", type=int)
    common.add_argument("--self-cot-max-new-tokens", type=int)
    common.add_argument("--ce-weight", type=float, help="weight of the CE term (0 with cot_raft: RAFT loss on CoT "
                                                        "data without CE, paper §6.3)")
    common.add_argument("--score-reduction", choices=["reference", "mean"],
                        help="score term: TRACT's per-micro-batch sum (reference) or a mean per sequence")
    common.add_argument("--validation-ratio", type=float,
                        help="hold out this share of the rows and log eval_loss on it (TRACT: 0.05)")
    common.add_argument("--no-bf16", action="store_true", help="train in float32")
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any TrainConfig / TrainingArguments field (value read as YAML); repeatable")
    return common


def register(subparsers) -> None:
    common = _common_options()
    train = subparsers.add_parser(
        "train", parents=[common], help="fine-tune a judge (CE, RAFT, CoT-RAFT, two-stage TRACT)",
        description="Run a training recipe, or one of its steps.")
    train.set_defaults(func=_cmd_recipe)
    steps = train.add_subparsers(dest="step", metavar="STEP")

    prepare = steps.add_parser("prepare", help="training JSONL (prompt, cot, score) from annotated data")
    prepare.add_argument("--source", action="append", required=True,
                         help="Feedback Collection hub id or JSON/JSONL file, or a Prometheus file with "
                              "gpt4_feedback/gpt4_score lists; repeatable")
    prepare.add_argument("--out", required=True, help="output JSONL")
    prepare.add_argument("--judge", default="tract", help="judge card giving the delimiter and scale")
    prepare.add_argument("--limit", type=int)
    prepare.add_argument("--score-only", action="store_true",
                         help="score-only rows (TRACT's no_feedback prompt, the bare score) for --objective ce|raft "
                              "with a score-only judge (B.1 CE, B.4 RAFT)")
    prepare.add_argument("--force-delimiter", action="store_true",
                         help="keep feedback that never says 'So the overall' by appending the delimiter "
                              "(TRACT leaves such rows out)")
    prepare.set_defaults(func=_cmd_prepare)

    for name, func, text in (
        ("stage1", _cmd_stage1, "train on annotation CoTs into OUT/stage1 (+ OUT/stage1/merged)"),
        ("self-cot", _cmd_self_cot, "one CoT per training row from the stage-1 model into OUT/self_cot.jsonl"),
        ("stage2", _cmd_stage2, "train the seed model on OUT/self_cot.jsonl into OUT/stage2"),
    ):
        steps.add_parser(name, parents=[common], help=text).set_defaults(func=func)


# -- helpers --------------------------------------------------------------------------------------------------------

def _option(args, name, default=None):
    return getattr(args, name, default)


def _overrides(args) -> dict:
    overrides = {field: _option(args, flag) for flag, field in _OVERRIDES.items()}
    if _option(args, "no_bf16"):
        overrides["bf16"] = False
    for item in _option(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _lambdas(args) -> list[float | None]:
    text = _option(args, "lambdas")
    if text is None:
        return [None]
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lambda expects numbers separated by commas, got {text!r}") from None


def _configs(args, **forced):
    """(config, out folder) per --lambda value."""
    from .config import build_config

    out = Path(_option(args, "out", DEFAULT_OUT))
    values = _lambdas(args)
    runs = []
    for value in values:
        overrides = {**_overrides(args), "score_weight": value, **forced}
        config = build_config(_option(args, "recipe", DEFAULT_RECIPE), overrides)
        runs.append((config, out if len(values) == 1 else out / f"lambda-{value:g}"))
    return runs


def _data(config) -> str:
    if not config.train_file:
        raise ConfigError("no training data: pass --data FILE (made by 'tract-eval train prepare') "
                         "or set train_file in the recipe")
    return config.train_file


def _print_summary(name: str, summary: dict) -> None:
    last = summary.get("last_log") or {}
    first = summary.get("first_log") or {}
    parts = [f"{name}: {summary.get('adapter', summary.get('file'))}"]
    if "global_step" in summary:
        parts.append(f"steps {summary['global_step']}, rows {summary['rows_used']}/{summary['rows']}")
        for key in ("ce_loss", "score_loss"):
            if key in last:
                parts.append(f"{key} {first.get(key)} -> {last[key]}")
        parts.append(f"{summary['train_seconds']} s")
    elif "rows" in summary:
        parts.append(f"{summary['rows']} rows, {summary['seconds']} s")
    print("; ".join(parts))


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


# -- commands -------------------------------------------------------------------------------------------------------

def _cmd_prepare(args) -> int:
    from ..config import load_judge_card
    from .data import TrainingDataError, prepare, write_jsonl

    try:
        judge = load_judge_card(args.judge)
        prepared = prepare(args.source, judge.delimiter, judge.scale, args.limit,
                           mode="score-only" if args.score_only else "cot", force_delimiter=args.force_delimiter)
    except (TrainingDataError, FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    count = write_jsonl(args.out, (row.to_dict() for row in prepared.rows))
    print(f"wrote {count} rows to {args.out}")
    if prepared.rejected:
        rejected_path = Path(args.out).with_suffix(".rejected.jsonl")
        write_jsonl(rejected_path, (vars(r) for r in prepared.rejected))
        print(f"left out {len(prepared.rejected)} rows (listed in {rejected_path}):")
        for item in prepared.rejected[:10]:
            print(f"  {item.source} row {item.row}: {item.reason}")
    return 0 if count else 1


def _cmd_recipe(args) -> int:
    from .pipeline import run_recipe

    try:
        runs = _configs(args)
        for config, out in runs:
            for name, summary in run_recipe(config, _data(config), out).items():
                _print_summary(f"{out} {name}", summary)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return 0


def _cmd_stage1(args) -> int:
    from ..config import load_judge_card
    from .data import load_training_rows
    from .pipeline import run_stage

    try:
        for config, out in _configs(args):
            judge = load_judge_card(config.judge)
            rows = load_training_rows(_data(config), judge.delimiter, judge.scale, config.limit)
            _print_summary(f"{out} stage1", run_stage(config, rows, out / "stage1", merged_dir=out / "stage1" / "merged"))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return 0


def _cmd_self_cot(args) -> int:
    import time

    from ..config import load_judge_card
    from .data import load_training_rows
    from .pipeline import generate_self_cots

    try:
        for config, out in _configs(args):
            judge = load_judge_card(config.judge)
            rows = load_training_rows(_data(config), judge.delimiter, judge.scale, config.limit, need_cot=False)
            merged = out / "stage1" / "merged"
            model = _option(args, "model") or str(merged if merged.is_dir() else out / "stage1")
            started = time.perf_counter()
            written = generate_self_cots(model, rows, config.judge, out / "self_cot.jsonl",
                                         config.self_cot_max_new_tokens, config.self_cot_batch_size)
            _print_summary(f"{out} self-cot", {"file": str(out / "self_cot.jsonl"), "rows": len(written),
                                               "seconds": round(time.perf_counter() - started, 2)})
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return 0


def _cmd_stage2(args) -> int:
    from ..config import load_judge_card
    from .data import load_training_rows
    from .pipeline import run_stage

    try:
        for config, out in _configs(args):
            judge = load_judge_card(config.judge)
            data = _option(args, "data") or str(out / "self_cot.jsonl")
            rows = load_training_rows(data, judge.delimiter, judge.scale, config.limit)
            _print_summary(f"{out} stage2", run_stage(config, rows, out / "stage2"))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return 0


def main(argv: list[str] | None = None) -> int:  # python -m tract_eval.training.cli
    parser = argparse.ArgumentParser(prog="tract-eval")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
