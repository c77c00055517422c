"""``tract-eval view``: write the static site of a set of runs (overview, a page and sample browser per run,
a comparison per benchmark two or more judges ran). Plain HTML, one stylesheet and one script of our own:
no request leaves the machine, and it opens from ``file://``."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from ...errors import UserError
from ...records import RESULTS
from .. import bootstrap
from ..runs import Run, RunFormatError, bench_order, collect_runs
from ..stats import parse_measures
from ..table import Table, bench_title, build_table
from . import pages
from .samples import run_data, write_data_script

HERE = Path(__file__).parent
MARKER = ".tract-eval-view"  # marks a folder this command wrote, so a rebuild may replace its files
OWN = ("index.html", "runs", "compare", "data", "plots", "assets", MARKER)


class SiteError(UserError, OSError):
    """``--out`` cannot hold the site (a file, a folder of other files, no permission)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Site:
    index: Path
    runs: int
    bytes: int


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "_"


def prepare_out(out: Path) -> None:
    """An empty or new folder, or one this command wrote before (its files are replaced)."""
    if out.exists() and not out.is_dir():
        raise SiteError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise SiteError(f"--out {out}: holds files tract-eval view did not write; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in OWN:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        (out / MARKER).write_text("written by tract-eval view; rebuilding replaces this folder's site files\n")
    except OSError as exc:
        raise SiteError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def stored_intervals(runs: list[Run]) -> dict | None:
    """The bootstrap settings of runs made with ``run --ci`` (their results.json holds intervals)."""
    for run in runs:
        path = run.path / RESULTS
        if not path.is_file():
            continue
        try:
            intervals = json.loads(path.read_text(encoding="utf-8")).get("intervals")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise RunFormatError(f"{path}: not a JSON object ({exc})") from exc
        if intervals:
            return intervals
    return None


def overview_table(runs: list[Run], metrics: str, ci: bool | None, resamples: int, seed: int,
                   confidence: float) -> Table:
    """The table ``tract-eval report`` prints; with intervals when asked (``ci``), or, when ``ci`` is None,
    when the runs were made with ``run --ci`` (then with the bootstrap settings they were made with)."""
    if ci:
        return build_table(runs, parse_measures(metrics), ci=True, resamples=resamples, seed=seed,
                           confidence=confidence)
    stored = stored_intervals(runs) if ci is None else None
    if stored:
        return build_table(runs, parse_measures(metrics), ci=True,
                           resamples=stored.get("resamples", bootstrap.DEFAULT_RESAMPLES), seed=stored.get("seed", 0),
                           confidence=stored.get("confidence", bootstrap.DEFAULT_CONFIDENCE))
    return build_table(runs, parse_measures(metrics))


def _environment():
    from ...prompts import sandboxed_environment

    # the sandbox as for every template (issue 19): a template renders data, it never runs code
    env = sandboxed_environment(HERE / "templates", autoescape=True, keep_trailing_newline=False, trim_blocks=True,
                                lstrip_blocks=True)
    env.filters["bench_title"] = bench_title
    return env


def _run_diagnostics(page: pages.RunPage, out: Path) -> dict:
    """The diagnostics a ``tract-eval diagnose`` left in the run folder, else computed here (no model is
    needed) with their plots written into the site: the run folder is only read."""
    from ..diagnostics import diagnose_run, write_plots

    run = page.run
    target = out / "plots" / page.slug
    lines = pages.diagnostics_lines(run.path)
    if lines is None:
        try:
            diagnostics = diagnose_run(run)
        except UserError as exc:  # e.g. a run of own data whose scale nothing records: the page says why
            return {"lines": None, "plots": [], "reason": str(exc)}
        names = write_plots(run, diagnostics, target)
        lines = pages.flatten(diagnostics)
    else:
        names = [name for name in pages.DIAGNOSTIC_PLOTS if (run.path / name).is_file()]
        for name in names:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.path / name, target / name)
    plots = [f"../plots/{page.slug}/{name}" for name in names]
    return {"lines": lines, "plots": plots}


def _write_run_page(env, page: pages.RunPage, table: Table, out: Path, compare: dict[str, str]) -> None:
    run = page.run
    protocol = run.manifest.judge.get("protocol")
    data = run_data(run, protocol)
    write_data_script(out / "data" / f"{page.slug}.js", page.slug, data)
    statuses = pages.status_counts(run)
    html = env.get_template("run.html.j2").render(
        root="../", title=f"{run.judge} × {bench_title(run.bench)}", page="run", slug=page.slug,
        kind=data["kind"], summary=pages.run_summary(page, table),
        table=pages.table_context(table, judges=[run.judge], benches=[run.bench]),
        metrics=pages.metrics_lines(run), scatter=Markup(pages.scatter(run)),
        diagnostics=_run_diagnostics(page, out), identity=pages.identity_text(run),
        sessions=pages.sessions(run), statuses=statuses, compare=compare)
    (out / "runs" / f"{page.slug}.html").write_text(html, encoding="utf-8")


def _write_compare_page(env, bench: str, run_pages: list[pages.RunPage], out: Path, compare: dict) -> None:
    html = env.get_template("compare.html.j2").render(
        root="../", title=f"Compare on {bench_title(bench)}", page="compare", bench=bench,
        runs=[{"slug": p.slug, "judge": p.run.judge} for p in run_pages], compare=compare)
    (out / compare[bench]).write_text(html, encoding="utf-8")


def _slugs(runs: list[Run]) -> list[pages.RunPage]:
    taken: set[str] = set()
    out = []
    for run in runs:
        slug = f"{_safe(run.judge)}__{_safe(run.bench)}"
        while slug in taken:  # two names that differ only in characters _safe replaced
            slug += "_"
        taken.add(slug)
        out.append(pages.RunPage(run, slug))
    return out


def write_site(roots: list[str | Path], out: str | Path, metrics: str = "r,rho", ci: bool | None = None,
               resamples: int = bootstrap.DEFAULT_RESAMPLES, seed: int = 0,
               confidence: float = bootstrap.DEFAULT_CONFIDENCE) -> Site:
    """Read the runs under ``roots`` and write the site into ``out`` (``out/index.html`` is its start).
    ``ci``: True adds bootstrap intervals to the table, None adds them when the runs were made with them."""
    out = Path(out)
    runs = collect_runs(roots)
    table = overview_table(runs, metrics, ci, resamples, seed, confidence)
    prepare_out(out)
    env = _environment()
    order = bench_order(r.bench for r in runs)
    run_pages = _slugs(sorted(runs, key=lambda r: (r.judge, order.index(r.bench))))
    by_bench: dict[str, list[pages.RunPage]] = {}
    for page in run_pages:
        by_bench.setdefault(page.run.bench, []).append(page)
    compare = {b: f"compare/{_safe(b)}.html" for b in bench_order(by_bench) if len(by_bench[b]) > 1}
    try:
        for folder in ("runs", "compare", "data", "assets"):
            (out / folder).mkdir()
        for asset in (HERE / "assets").iterdir():
            shutil.copyfile(asset, out / "assets" / asset.name)
        for page in run_pages:
            _write_run_page(env, page, table, out, compare)
        for bench in compare:
            _write_compare_page(env, bench, by_bench[bench], out, compare)
        index = out / "index.html"
        index.write_text(env.get_template("index.html.j2").render(
            root="", title="Overview", page="overview", table=pages.table_context(table),
            runs=[pages.run_summary(p, table) for p in run_pages], compare=compare,
            benches=[bench_title(b) for b in table.benches]), encoding="utf-8")
    except OSError as exc:
        raise SiteError(f"--out {out}: writing the site failed ({exc.strerror or exc})") from None
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Site(index, len(run_pages), size)
