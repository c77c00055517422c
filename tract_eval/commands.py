"""``tract-eval list | run | merge``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .backends.options import add_backend_flags, backend_options_from_args
from .cliargs import add_cards_option, add_command, add_data_options, use_cards
from .judge_config import MAX_SCALE_POINTS, SCORE_ONLY_ANCHORS, VERDICT_PARSERS, JudgeOverrides
from .errors import InputNotFoundError
from .protocol import READOUTS
from .progress import progress_reporter


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list judges, benchmarks or backends")
    p.add_argument("what", choices=["judges", "benches", "backends"])
    add_cards_option(p)
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("run", help="run judges over benchmarks",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--judge", required=True,
                   help="judge name(s), comma-separated: built-in card, plugin, or path to a YAML card")
    p.add_argument("--bench", required=True,
                   help="benchmark name(s), comma-separated, or 'all'; or your own data: a .jsonl/.json/.csv/.parquet "
                        "file or hf:ORG/NAME[:SPLIT] with columns instruction, response, rubric[, reference][, score]")
    p.add_argument("--columns", default=None, metavar="ROLE=COLUMN,...",
                   help="own data: map roles to your column names, e.g. rubric=criteria,score=label")
    p.add_argument("--scale", default=None, metavar="LOW-HIGH",
                   help=f"own data: the score scale, e.g. 1-10 (default 1-5), at most {MAX_SCALE_POINTS} scores "
                        f"(0-{MAX_SCALE_POINTS - 1}); the judge's score candidates follow it")
    add_cards_option(p)
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder")
    p.add_argument("--run-name", default=None,
                   help="name of the judge folder under --out (default: the judge's name)")
    p.add_argument("--ci", action="store_true", help="bootstrap 95%% intervals of the metrics in results.json")
    add_data_options(p, "first N rows (pairwise benchmarks: N pairs)")
    p.add_argument("--shard", default=None, help="i/n: judge only the i-th of n disjoint parts")
    p.add_argument("--no-reference", action="store_true",
                   help="cut the reference answer out of the model input as TRACT's --remove_reference does")
    p.add_argument("--unparsed-pairs", choices=["half", "exclude"], default="half",
                   help="RewardBench: a pair with an unscored side counts 0.5 like a tie (as reward-bench), "
                        "or is left out of the accuracies")
    p.add_argument("--too-long", choices=["mark", "refuse"], default="mark",
                   help="a prompt + --max-new-tokens beyond the model's context: record the row as too_long "
                        "(excluded, counted) or stop the run")
    p.add_argument("--rejudge-failures", action="store_true",
                   help="judge failed rows again, the model's (unparsable verdicts) too; rows the server "
                        "failed (malformed or impossible answers, outages) are judged again by default")
    add_judge_overrides(p)
    p.set_defaults(func=cmd_run)

    p = add_command(subparsers, "merge", cmd_merge, help="combine shard runs into one run")
    p.add_argument("run_dir", type=Path, help="OUT/<judge>/<bench> holding shards/")
    add_data_options(p, limit_help="")


# The JudgeOverrides fields that have a flag (``--`` + the field's name with dashes), with the flag's
# argparse settings besides its type, which the field's type gives. In this order in --help.
JUDGE_FLAGS: dict[str, dict[str, Any]] = {
    "model": {"help": "HF id, local folder, .gguf file or LoRA adapter folder"},
    "backend": {},
    "device": {"help": "auto, cpu, cuda, cuda:1, ..."},
    "dtype": {"help": "auto, float32, bfloat16, float16"},
    "n_cot": {}, "seed": {}, "temperature": {}, "top_p": {}, "repetition_penalty": {}, "max_new_tokens": {},
    "batch_size": {"help": "sequences decoded together; auto: the most that fit in GPU memory (transformers on CUDA)"},
    "renormalize": {"action": "store_true",  # given: True; not given: None, the card's value
                    "help": "RAIL over the candidates' probabilities renormalised to sum to 1 "
                            "(default: raw full-vocabulary probabilities, as the reference)"},
    "readout": {"choices": READOUTS,
                "help": "CoT judges: read the score after the reference's retokenized text (prompt + CoT stripped "
                        "on both sides + delimiter; default) or after the sampled ids themselves ('sampled')"},
    "score_only_anchor": {"choices": SCORE_ONLY_ANCHORS,
                          "help": "score-only judges: read after the empty assistant turn as the reference code "
                                  "rendered it (default) or after the opened assistant turn ('generation-prompt')"},
    "verdict_parser": {"choices": VERDICT_PARSERS,
                       "help": "prometheus judges: prometheus-eval's eval/ rule, exactly '[RESULT] n' (default); "
                               "'library': its library parser's (prometheus_eval/parser.py); 'lenient': "
                               "tract_eval.parse_score's wider shapes"},
    "parse_failure_policy": {"choices": ["exclude", "fallback"]},
    "fallback_score": {},
}
# The JudgeOverrides fields without a judge-override flag, and why. A new JudgeConfig field must be
# put in one of the two tables (tests/test_judge_overrides.py).
NO_JUDGE_FLAG = {
    "run_name": "run's own --run-name: one judge's output folder",
    "scale": "follows the data: own data's --scale, else the benchmark card's",
    "backend_options": "the backend flags (backends.options.add_backend_flags)",
    **dict.fromkeys(("description", "judge_class", "template", "system_prompt", "protocol", "delimiter",
                     "cut_marker", "stop", "max_retries", "unparsed_runs", "partial_candidates", "feedback_label"),
                    "what a judge is: a card setting (a card of your own: --cards), or a Python API keyword"),
}


def add_judge_overrides(p: argparse.ArgumentParser, renamed_backend_flags: dict[str, str] | None = None) -> None:
    """Flags that override a judge card (None = keep the card's value), one per JUDGE_FLAGS field;
    ``renamed_backend_flags`` as ``add_backend_flags`` takes it."""
    kinds = {f.name: f.type for f in dataclasses.fields(JudgeOverrides)}
    g = p.add_argument_group("judge overrides (default: the card's values)")
    for name, settings in JUDGE_FLAGS.items():
        valued = {} if "action" in settings else {"type": _FLAG_TYPES.get(kinds[name]), "default": None}
        g.add_argument("--" + name.replace("_", "-"), **valued, **settings)
    add_backend_flags(p, renamed_backend_flags)


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of sequences or 'auto', not {text!r}") from None


# a JudgeOverrides field's type -> how its flag reads the text (str: as it is)
_FLAG_TYPES = {int | None: int, float | None: float, int | str | None: _batch_size}


def judge_overrides(args) -> JudgeOverrides:
    """The judge overrides the flags of ``add_judge_overrides`` give."""
    given = {name: getattr(args, name) for name in JUDGE_FLAGS}
    given["renormalize"] = given["renormalize"] or None  # store_true: not given is the card's value
    return JudgeOverrides(**given, backend_options=backend_options_from_args(args) or None)


def cmd_list(args) -> int:
    use_cards(args)
    if args.what == "judges":
        from .judges import judge_names, load_judge_config

        for name in judge_names():
            config, _ = load_judge_config(name)
            print(f"{name:16s} {config.description}")
    elif args.what == "benches":
        from .benchmarks import benchmark_names, load_card

        for name in benchmark_names():
            card = load_card(name)
            print(f"{name:16s} {card.title} ({card.kind})")
    else:
        from .backends import BACKENDS

        print("\n".join(BACKENDS.names()))
    return 0


def cmd_run(args) -> int:
    from rich.console import Console

    from .api import evaluate

    console = Console(stderr=True, quiet=bool(args.quiet))
    use_cards(args)
    skipped: list[tuple[str, str]] = []
    results, usage_lines = [], {}

    def on_skip(name: str, reason: str) -> None:
        skipped.append((name, reason))
        console.print(f"[yellow]skipped {name}[/]: {reason}")

    def on_run(judge, bench, result) -> None:
        results.append(result)
        if judge.model_note:
            console.print(f"[red]NOTE[/] {judge.name}: {judge.model_note}")
        usage_lines[judge.name] = _usage_line(judge)  # the judge's last run: its whole usage

    evaluate(args.judge, args.bench, limit=args.limit, out=args.out, data_dir=args.data_dir, columns=args.columns,
             scale=args.scale, no_reference=args.no_reference, unparsed_pairs=args.unparsed_pairs, shard=args.shard,
             too_long=args.too_long, ci=args.ci, rejudge_failures=args.rejudge_failures,
             overrides=dataclasses.replace(judge_overrides(args), run_name=args.run_name),
             progress_for=lambda label, total: progress_reporter(console, label, total),
             on_skip=on_skip, on_run=on_run)
    print_summary(results, skipped)
    for lines in usage_lines.values():
        for line in lines:
            print(line)
    return 0


def _usage_line(judge) -> list[str]:
    """API backends: calls, retries, tokens and cost of this process (also in each manifest)."""
    if judge._backend is None:
        return []
    described = judge.backend.describe()
    usage = described.get("usage")
    if not usage:
        return []
    cost = described.get("cost_usd")
    return [f"{judge.name} via {described.get('backend')}: {usage['calls']} calls, {usage['retries']} retries, "
            f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
            + (f", cost ${cost:.4f}" if cost is not None else " (no price table: cost not computed)")]


def print_summary(results, skipped) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tract-eval summary")
    for column in ("judge", "bench", "n", "pearson", "spearman", "kendall", "rmse",
                   "accuracy / score", "parse fail", "new", "reused", "seconds"):
        table.add_column(column, justify="right" if column not in ("judge", "bench") else "left")

    def fmt(value) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    for r in results:
        m = r.metrics
        if r.kind == "pairwise":
            sections = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in m["sections"].items())
            table.add_row(r.judge, r.bench, fmt(m["n_pairs"]), "", "", "", "",
                          f"{fmt(m['score'])} ({sections})", fmt(m["parse_failures"]),
                          str(r.new_samples), str(r.reused_samples), f"{r.seconds:.1f}")
        elif "predicted" in m:  # own data without gold scores
            table.add_row(r.judge, r.bench, fmt(m["n_total"]), "", "", "", "",
                          f"mean prediction {fmt(m['mean_prediction'])} (no gold)", fmt(m["parse_failures"]),
                          str(r.new_samples), str(r.reused_samples), f"{r.seconds:.1f}")
        else:
            table.add_row(r.judge, r.bench, fmt(m["n"]), fmt(m["pearson"]), fmt(m["spearman"]), fmt(m["kendall"]),
                          fmt(m["rmse"]), "", fmt(m["parse_failures"]),
                          str(r.new_samples), str(r.reused_samples), f"{r.seconds:.1f}")
    Console(width=200).print(table)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")


def cmd_merge(args) -> int:
    from .benchmarks import reload_benchmark
    from .records import MANIFEST, SHARDS
    from .runner import merge_shards, read_shard_manifest

    # the shards' manifest says what ran (a card, a data file or hf: dataset, columns, scale, options)
    manifests = sorted((args.run_dir / SHARDS).glob(f"*-of-*/{MANIFEST}"))
    if not manifests:
        raise InputNotFoundError(f"{args.run_dir}/{SHARDS} holds no shard folders with a {MANIFEST}")
    described = read_shard_manifest(manifests[0].parent)["bench"]
    bench = reload_benchmark(described, args.data_dir)
    json.dump(merge_shards(args.run_dir, bench), sys.stdout, indent=2)
    print()
    return 0
