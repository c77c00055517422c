"""Subcommands ``scaling`` and ``analyze``: they run judges (and so load models). Heavy imports happen inside."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..cliargs import add_command, add_data_options, add_output_file
from ..errors import ConfigError
from ..reports.cli import write_output


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _absolute_benches(spec: str, data_dir, annotated: bool = False) -> list:
    """``api.load_benches`` for the analyses: absolute benchmarks only; with 'all', the others are named."""
    from ..api import load_benches

    return load_benches(spec, data_dir, kinds=("absolute",), annotated=annotated,
                        on_skip=lambda name, why: print(f"skipped {name}: {why}", file=sys.stderr))


def _cmd_scaling(args) -> int:
    import json

    from ..api import judge_names
    from ..commands import judge_overrides
    from .scaling import average_curve, plot, points_table, run_scaling
    from ..reports.table import bench_title

    overrides = dataclasses.replace(judge_overrides(args), n_cot=None)  # the K values come from --n-cot as a list
    base_seed = args.seed if args.seed is not None else 0
    seeds = [base_seed + i for i in range(args.seeds)]
    benches = _absolute_benches(args.bench, args.data_dir)
    judges = judge_names(args.judge)
    points = run_scaling(judges, benches, args.n_cot, seeds, overrides, Path(args.cache or args.out), args.limit,
                         log_line=lambda line: print(line, file=sys.stderr))
    bench_names = [b.name for b in benches]
    if len(bench_names) > 1:
        points += average_curve(points, bench_names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = points_table(points)
    (out / "scaling.json").write_text(json.dumps({"judges": judges, "benches": bench_names, "k": args.n_cot,
                                                  "seeds": seeds, "limit": args.limit, "caption": args.caption,
                                                  "points": table}, indent=2) + "\n")
    import pandas as pd

    frame = pd.DataFrame(table).drop(columns=["per_seed_r"])
    frame.to_csv(out / "scaling.csv", index=False)
    frame["cell"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(frame.mean_r, frame.std_r)]
    frame["bench"] = frame.bench.map(bench_title)
    wide = frame.pivot_table(index=["judge", "bench"], columns="k", values="cell", aggfunc="first", sort=False)
    wide.columns = [f"K={k}" for k in wide.columns]
    markdown = wide.reset_index().to_markdown(index=False)
    note = (f"Pearson r, mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))}); "
            f"{'first ' + str(args.limit) if args.limit else 'all'} samples per benchmark; "
            "each K averages the first K of the same sampled CoTs.")
    (out / "scaling.md").write_text((args.caption + "\n\n" if args.caption else "") + markdown + "\n\n" + note + "\n")
    paths = plot(points, out / "scaling", title=args.caption)
    print(markdown + "\n\n" + note)
    print(f"wrote {out / 'scaling.md'}, scaling.csv, scaling.json, {paths[0].name}, {paths[1].name}", file=sys.stderr)
    return 0


def _cmd_cot_shift(args) -> int:
    import json

    from ..commands import judge_overrides
    from ..judges import build_judge
    from .analysis import annotation_cots, cot_shift, read_annotation_file

    judge = build_judge(args.judge, judge_overrides(args))
    results, details = {}, {}
    for bench in _absolute_benches(args.bench, args.data_dir, annotated=not args.cots):
        samples = bench.select(args.limit)
        annotations = read_annotation_file(args.cots) if args.cots else annotation_cots(bench)
        summary, rows = cot_shift(judge, samples, annotations)
        results[bench.name], details[bench.name] = summary.to_dict(), rows
        print(f"{bench.name}: RMSE given annotation CoTs {summary.rmse_given:.3f}, own CoTs {summary.rmse_own:.3f} "
              f"({summary.rows} rows, {summary.samples} samples, {summary.failed_own} own-CoT failures)")
    payload = {"judge": judge.config.to_dict(), "backend": judge.backend.describe(), "limit": args.limit,
               "results": results}
    if args.out:
        write_output(json.dumps(payload, indent=2) + "\n", args.out)
        rows_path = Path(args.out).with_suffix(".rows.jsonl")
        rows_path.write_text("".join(json.dumps({"bench": b, **r}) + "\n" for b, rows in details.items() for r in rows))
    return 0


def _cmd_perplexity(args) -> int:
    import json

    from ..commands import judge_overrides
    from .analysis import annotation_cots, own_cot_text, perplexity
    from ..judges import build_judge
    from ..reports.runs import load_run

    judge = build_judge(args.judge, judge_overrides(args))
    sets = {}
    if args.run:
        for folder in args.run:
            run = load_run(Path(folder))
            pairs = [(row.input, own_cot_text(row, i, judge.config.delimiter))
                     for row in run.rows[: args.limit] for i in range(len(row.cots))]
            sets[f"run:{run.judge}/{run.bench}"] = [p for p in pairs if p[1]]
    if args.bench:
        for bench in _absolute_benches(args.bench, args.data_dir):
            samples = {s.id: s for s in bench.select(args.limit)}
            inputs = {sid: judge.build_input(s) for sid, s in samples.items()}
            sets[f"annotation:{bench.name}"] = [(inputs[a.sample_id], a.cot) for a in annotation_cots(bench)
                                                if a.sample_id in samples]
    if not sets:
        raise ConfigError("give --run and/or --bench")
    results = {}
    for name, pairs in sets.items():
        result = perplexity(judge.backend, pairs)
        results[name] = result.to_dict()
        print(f"{name}: perplexity {result.perplexity:.2f} (mean per text {result.mean_text_perplexity:.2f}) "
              f"over {result.texts} CoTs, {result.tokens} tokens")
    if args.out:
        write_output(json.dumps({"model": judge.backend.describe(), "limit": args.limit, "results": results}, indent=2)
               + "\n", args.out)
    return 0


def register(subparsers) -> None:
    from ..commands import add_judge_overrides  # argparse only: light

    scaling = add_command(
        subparsers, "scaling", _cmd_scaling, conflict_handler="resolve",
        help="Pearson r against the number of CoTs K, mean ± std over seeds (paper Figure 3)",
        description="Samples max(K) CoTs per sample once per seed (cached under --cache, default --out) and "
                    "reuses the first K for each smaller K; a later run with a larger K samples only the "
                    "missing CoTs, and none at all loads no model. Writes scaling.{md,csv,json,png,svg}.")
    scaling.add_argument("--judge", required=True, help="judge name(s), comma-separated")
    scaling.add_argument("--bench", required=True, help="absolute benchmark name(s), comma-separated, or 'all'")
    scaling.add_argument("--out", default="reports/scaling", help="folder for the table and plot")
    scaling.add_argument("--cache", default=None, help="CoT cache root (default: --out)")
    add_data_options(scaling)
    scaling.add_argument("--seeds", type=int, default=3, help="number of seeds: --seed, --seed+1, ... (default 3)")
    scaling.add_argument("--caption", default="", help="title for the plot and the markdown table")
    add_judge_overrides(scaling)
    scaling.add_argument("--n-cot", type=_int_list, default=[1, 2, 4, 8], help="K values (default 1,2,4,8)")

    analyze = subparsers.add_parser("analyze", help="CoT analyses: cot-shift (Table 3), perplexity (App. B.4)")
    kinds = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    shift = add_command(
        kinds, "cot-shift", _cmd_cot_shift, help="RMSE given annotation CoTs vs the model's own CoTs",
        description="For each (input, annotation CoT, gold) row: the RAIL score read after the given CoT "
                    "(+ ' So the overall score is') and after the model's own sampled CoT(s), and the RMSE of "
                    "each against the annotation's score. Annotation CoTs: the fields the benchmark card's "
                    "annotation_cots names (Prometheus files: gpt4_feedback / gpt4_score), or --cots FILE.")
    shift.add_argument("--judge", default="tract")
    shift.add_argument("--bench", default="all",
                       help="benchmark name(s); default all: those whose card names annotation_cots and whose "
                            "data is here (any absolute benchmark with --cots)")
    shift.add_argument("--cots", help="JSONL of {id, cot, gold} instead of the benchmark's annotations")
    add_data_options(shift)
    add_output_file(shift, "JSON summary here; per-row details next to it (.rows.jsonl)")
    add_judge_overrides(shift)

    ppl = add_command(
        kinds, "perplexity", _cmd_perplexity, help="perplexity of CoTs under a model",
        description="Mean token negative log-likelihood (as perplexity) of CoTs given their chat-templated "
                    "prompt: annotation CoTs of --bench (prompt built by --judge's template) and/or the CoTs "
                    "stored in --run folders (their own inputs; the forced delimiter is left out).")
    ppl.add_argument("--judge", default="tract", help="judge card giving the template and default model")
    ppl.add_argument("--bench", help="benchmark(s) whose annotation CoTs to score")
    ppl.add_argument("--run", nargs="+", help="run folders OUT/<judge>/<bench> whose CoTs to score")
    add_data_options(ppl, "first N samples (rows of a run)")
    add_output_file(ppl, "JSON summary here")
    add_judge_overrides(ppl)
