"""``tract-eval list | run | merge``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backends.options import add_backend_flags, backend_options_from_args
from .cliargs import add_cards_option, add_command, add_data_options, use_cards
from .judge_config import MAX_SCALE_POINTS, SCORE_ONLY_ANCHORS, VERDICT_PARSERS
from .errors import ConfigError, InputNotFoundError
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


def add_judge_overrides(p: argparse.ArgumentParser, renamed_backend_flags: dict[str, str] | None = None) -> None:
    """Flags that override a judge card (None = keep the card's value); ``renamed_backend_flags`` as
    ``add_backend_flags`` takes it."""
    g = p.add_argument_group("judge overrides (default: the card's values)")
    g.add_argument("--model", default=None, help="HF id, local folder, .gguf file or LoRA adapter folder")
    g.add_argument("--backend", default=None)
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
    g.add_argument("--n-cot", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--batch-size", type=_batch_size, default=None,
                   help="sequences decoded together; auto: the most that fit in GPU memory (transformers on CUDA)")
    g.add_argument("--renormalize", action="store_true",
                   help="RAIL over the candidates' probabilities renormalised to sum to 1 "
                        "(default: raw full-vocabulary probabilities, as the reference)")
    g.add_argument("--readout", choices=READOUTS, default=None,
                   help="CoT judges: read the score after the reference's retokenized text (prompt + CoT stripped "
                        "on both sides + delimiter; default) or after the sampled ids themselves ('sampled')")
    g.add_argument("--score-only-anchor", choices=SCORE_ONLY_ANCHORS, default=None,
                   help="score-only judges: read after the empty assistant turn as the reference code rendered "
                        "it (default) or after the opened assistant turn ('generation-prompt')")
    g.add_argument("--verdict-parser", choices=VERDICT_PARSERS, default=None,
                   help="prometheus judges: prometheus-eval's eval/ rule, exactly '[RESULT] n' (default); "
                        "'library': its library parser's (prometheus_eval/parser.py); 'lenient': "
                        "tract_eval.parse_score's wider shapes")
    g.add_argument("--parse-failure-policy", choices=["exclude", "fallback"], default=None)
    g.add_argument("--fallback-score", type=float, default=None)
    add_backend_flags(p, renamed_backend_flags)


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of sequences or 'auto', not {text!r}") from None


def judge_overrides(args) -> dict:
    return {
        "model": args.model, "backend": args.backend, "device": args.device, "dtype": args.dtype,
        "n_cot": args.n_cot, "seed": args.seed, "temperature": args.temperature, "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "renormalize": True if args.renormalize else None,
        "parse_failure_policy": args.parse_failure_policy, "fallback_score": args.fallback_score,
        "readout": args.readout, "score_only_anchor": args.score_only_anchor, "verdict_parser": args.verdict_parser,
        "backend_options": backend_options_from_args(args),
    }


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

    from .api import judge_for, judge_names, load_benches, write_results
    from .runner import parse_shard, run_benchmark

    console = Console(stderr=True, quiet=bool(args.quiet))
    # Everything a user can get wrong is checked here, before any model loads.
    shard = parse_shard(args.shard)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, not {args.limit}")
    use_cards(args)
    names = judge_names(args.judge)
    if args.run_name and len(names) > 1:
        raise ConfigError("--run-name names one judge's folder; run one judge at a time with it")
    overrides = {**judge_overrides(args), "run_name": args.run_name}
    for name in names:
        judge_for(name, overrides)
    skipped: list[tuple[str, str]] = []
    benches = load_benches(args.bench, args.data_dir, columns=args.columns, scale=args.scale,
                           no_reference=args.no_reference, unparsed_pairs=args.unparsed_pairs, on_skip=lambda n, why: skipped.append((n, why)))
    for name, reason in skipped:
        console.print(f"[yellow]skipped {name}[/]: {reason}")

    results, usage_lines = [], []
    for name in names:
        for bench in benches:
            judge = judge_for(name, overrides, bench.card.scale)
            total = len(bench.select(args.limit))
            with progress_reporter(console, f"{judge.name} × {bench.name}", total) as advance:
                result = run_benchmark(judge, bench, args.out, limit=args.limit, shard=shard,
                                       batch_size=args.batch_size, too_long=args.too_long,
                                       rejudge_failures=args.rejudge_failures, progress=advance)
            write_results(result, judge, bench, ci=args.ci)
            results.append(result)
            if judge.model_note:
                console.print(f"[red]NOTE[/] {judge.name}: {judge.model_note}")
        usage_lines.extend(_usage_line(judge))
    print_summary(results, skipped)
    for line in usage_lines:
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
