"""Subcommands ``report``, ``compare``, ``lambda-sweep`` and ``diagnose``: read stored runs, load no model. Heavy imports happen inside the commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cliargs import add_cards_option, add_command, add_output_file, use_cards

DEFAULT_RESAMPLES = 1000  # mirrors bootstrap.DEFAULT_RESAMPLES without importing numpy at CLI start


def write_output(text: str, out: str | None) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def warn_different_data(differences: list[str]) -> None:
    for line in differences:  # --allow-different-data: said on every run of the command, never silently
        print(f"WARNING: {line}", file=sys.stderr)


def _add_allow_different_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-different-data", action="store_true",
                        help="runs of one benchmark judged on different data or benchmark options are refused; "
                             "with this flag they are used anyway, each difference printed as a WARNING")


def _add_metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default="r,rho", help="comma list of r, rho, tau, rmse (default r,rho)")


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")


def _cmd_report(args) -> int:
    from .render import render
    from .runs import check_same_benchmarks, collect_runs
    from .stats import parse_measures
    from .table import build_table

    use_cards(args)
    runs = collect_runs(args.runs)
    warn_different_data(check_same_benchmarks(runs, args.allow_different_data))
    table = build_table(runs, parse_measures(args.metrics), ci=args.ci,
                        resamples=args.resamples, seed=args.seed, confidence=args.confidence)
    write_output(render(table, args.format, caption_prefix=args.caption, standalone=args.standalone), args.out)
    return 0


def _cmd_compare(args) -> int:
    import json

    from .compare import compare, to_markdown, unshared_benches
    from .runs import check_same_benchmarks, collect_runs
    from .stats import parse_measures

    use_cards(args)
    runs_a, runs_b = collect_runs([args.a]), collect_runs([args.b])
    warn_different_data(check_same_benchmarks(runs_a + runs_b, args.allow_different_data))
    diffs = compare(runs_a, runs_b, parse_measures(args.metrics), resamples=args.resamples, seed=args.seed,
                    confidence=args.confidence)
    label_a, label_b = runs_a[0].judge, runs_b[0].judge
    if args.format == "json":
        text = json.dumps({"a": label_a, "b": label_b, "resamples": args.resamples, "seed": args.seed,
                           "confidence": args.confidence, "differences": [d.to_dict() for d in diffs],
                           "not_compared": unshared_benches(runs_a, runs_b)}, indent=2) + "\n"
    else:
        text = to_markdown(diffs, label_a, label_b, args.confidence, args.resamples, args.seed,
                           unshared_benches(runs_a, runs_b))
    write_output(text, args.out)
    return 0


def _cmd_lambda_sweep(args) -> int:
    from .lambda_sweep import sweep_points, write_sweep
    from .runs import collect_runs

    points = sweep_points(collect_runs(args.runs))
    for path in write_sweep(points, Path(args.out)):
        print(path)
    print((Path(args.out) / "lambda_sweep.md").read_text())
    return 0


def _cmd_view(args) -> int:
    from .view import write_site

    use_cards(args)
    site = write_site(args.runs, args.out, metrics=args.metrics, ci=True if args.ci else None,
                      resamples=args.resamples, seed=args.seed, confidence=args.confidence)
    print(f"wrote {site.index} ({site.runs} runs, {site.bytes / 1e6:.1f} MB)", file=sys.stderr)
    if args.serve is not None:
        return _serve(site.index.parent, args.serve, args.open)
    if args.open:
        import webbrowser

        webbrowser.open(site.index.resolve().as_uri())
    return 0


def _serve(folder: Path, port: int, open_browser: bool) -> int:
    from .view.serve import make_server

    server = make_server(folder, port)
    url = f"http://{server.server_address[0]}:{server.server_address[1]}/"
    print(f"serving {folder} at {url} (127.0.0.1 only; Ctrl-C stops)", file=sys.stderr)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _cmd_diagnose(args) -> int:
    import json

    from .diagnose_table import render_diagnostics
    from .diagnostics import diagnose

    use_cards(args)
    results = diagnose(args.runs, agreement=args.agreement)
    if args.format == "json":
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        sys.stdout.write(render_diagnostics(results, args.format, agreement=args.agreement))
    return 0


def register(subparsers) -> None:
    diag = add_command(
        subparsers, "diagnose", _cmd_diagnose,
        help="calibration, readouts, agreement, failures, length bias and cost of stored runs",
        description="Reads stored runs (no model is loaded), writes diagnostics.json, reliability.png and "
                    "distribution.png into each OUT/<judge>/<bench>/ folder, adds the diagnostics to its "
                    "results.json and prints a table. See docs/diagnose.md for each number.")
    diag.add_argument("runs", nargs="+", help="run folders: OUT, OUT/<judge> or OUT/<judge>/<bench>")
    diag.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                      help="json: {judge: {bench: diagnostics}} on stdout")
    diag.add_argument("--agreement", action="store_true",
                      help="also Krippendorff's alpha between every two judges on the same benchmark, and each "
                           "judge's entropy and ECE side by side")
    add_cards_option(diag)

    sweep = add_command(
        subparsers, "lambda-sweep", _cmd_lambda_sweep,
        help="paper Figure 2: average Pearson r against the CoT-RAFT weight λ",
        description="For runs of models trained with `tract-eval train --lambda ...` (one judge folder per "
                    "model), read λ from each model's training_summary.json and plot average Pearson r vs λ.")
    sweep.add_argument("runs", nargs="+", help="run folders: OUT or OUT/<judge>")
    sweep.add_argument("--out", default="reports/lambda", help="folder for lambda_sweep.{md,json,png,svg}")

    report = add_command(
        subparsers, "report", _cmd_report, help="paper-style table (Table 2) from stored runs",
        description="One row per judge, benchmark x metric columns, an Average over the benchmarks whose card "
                    "says average: true (those present) and pairwise accuracy per section. Titles, order and "
                    "sections come from the benchmark cards. Metrics are recomputed from predictions.jsonl; "
                    "no model is loaded.")
    report.add_argument("runs", nargs="+", help="run folders: OUT, OUT/<judge> or OUT/<judge>/<bench>")
    report.add_argument("--format", choices=("markdown", "latex", "csv", "long-csv", "json"), default="markdown",
                        help="long-csv: one row per judge, model, bench, metric (value, ci_low, ci_high, n)")
    _add_metrics(report)
    report.add_argument("--ci", action="store_true", help="add percentile bootstrap intervals over samples")
    _add_bootstrap_options(report)
    report.add_argument("--caption", default="", help="text put before the generated caption notes")
    report.add_argument("--standalone", action="store_true", help="LaTeX: a full document (compiles alone)")
    add_output_file(report)
    _add_allow_different_data(report)
    add_cards_option(report)  # titles, order and Average membership of benchmarks from your own cards

    comp = add_command(
        subparsers, "compare", _cmd_compare, help="paired bootstrap of the difference between two judges",
        description="For each benchmark both judges ran, the difference A - B of each metric on the samples "
                    "both scored, with a paired bootstrap interval and two-sided p-value; also on the Average.")
    comp.add_argument("a", help="run folder of judge A (OUT/<judge>)")
    comp.add_argument("b", help="run folder of judge B")
    _add_metrics(comp)
    _add_bootstrap_options(comp)
    comp.add_argument("--format", choices=("markdown", "json"), default="markdown")
    _add_allow_different_data(comp)
    add_output_file(comp)
    add_cards_option(comp)

    view = add_command(
        subparsers, "view", _cmd_view, help="a static HTML site of stored runs: table, samples, CoTs",
        description="Write a site that opens offline from file:// (no request leaves the machine): the report's "
                    "table with models, parse failures and coverage; per run its metrics, a scatter of "
                    "prediction against gold, diagnostics, identity and a sample browser (filter, sort, open a "
                    "row for its input, CoTs and score distribution); per benchmark two judges side by side.")
    view.add_argument("runs", nargs="+", help="run folders: OUT, OUT/<judge> or OUT/<judge>/<bench>")
    view.add_argument("--out", required=True, help="folder for the site (new, empty, or a site written before)")
    view.add_argument("--open", action="store_true", help="open it in the default browser")
    view.add_argument("--serve", type=int, default=None, metavar="PORT",
                      help="then serve it read-only on 127.0.0.1:PORT until Ctrl-C (for a remote machine)")
    _add_metrics(view)
    view.add_argument("--ci", action="store_true",
                      help="bootstrap intervals in the table (default: when the runs were made with --ci, "
                           "with their settings)")
    _add_bootstrap_options(view)
    add_cards_option(view)
