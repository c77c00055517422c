"""What each page shows, as plain values for the templates: the overview from the report's own
:class:`~tract_eval.reports.table.Table` (so the site and ``tract-eval report`` cannot disagree), and per
run its metrics, scatter, diagnostics and manifest identity."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...records import STATUSES
from ...redaction import redact
from ..render import caption, counts_text
from ..runs import Run
from ..table import Table, bench_title, run_model
from .svg import Point, scatter_svg

DIAGNOSTICS = "diagnostics.json"
DIAGNOSTIC_PLOTS = ("reliability.png", "distribution.png")


@dataclass
class RunPage:
    run: Run
    slug: str  # file stem of the run's page, data script and plots in the site

    @property
    def href(self) -> str:
        return f"runs/{self.slug}.html"


def _cell(table: Table, judge: str, column) -> dict:
    cell = table.cells.get((judge, column))
    if cell is None:
        return {"text": "–", "interval": "", "rank": 0, "partial": False}
    return {"text": cell.text(column), "interval": cell.interval(column), "rank": cell.rank,
            "partial": cell.partial}


def table_context(table: Table, judges: list[str] | None = None, benches: list[str] | None = None) -> dict:
    """The report's table (optionally one judge's row and one benchmark's columns) as the templates draw it:
    group titles with spans, column labels, and per judge its cells, counts and model."""
    judges = judges or table.judges
    columns = [c for c in table.columns if benches is None or c.group in benches]
    groups = []
    for column in columns:
        if not groups or groups[-1]["group"] != column.group:
            groups.append({"group": column.group, "title": bench_title(column.group), "span": 0})
        groups[-1]["span"] += 1
    shown_benches = [b for b in table.benches if benches is None or b in benches]
    return {
        "groups": groups,
        "labels": [c.label("markdown") for c in columns],
        "rows": [{"judge": j, "cells": [_cell(table, j, c) for c in columns], "model": table.judge_models(j),
                  "counts": [counts_text(table, j, b) for b in shown_benches]} for j in judges],
        "count_titles": [bench_title(b) for b in shown_benches],
        "caption": caption(table),
    }


def status_counts(run: Run) -> dict[str, int]:
    counts = Counter(row.status for row in run.rows)
    return {status: counts.get(status, 0) for status in STATUSES}


def coverage_text(run: Run, table: Table) -> str:
    """RewardBench: which sections a partial run left out (its metrics.json says); absolute: rows scored."""
    coverage = run.metrics.raw.get("coverage")
    if isinstance(coverage, dict):
        if coverage.get("complete"):
            return "complete"
        missing = coverage.get("missing_sections") or []
        subsets = coverage.get("missing_subsets") or []
        text = f"partial: {len(subsets)} subsets not judged"
        return text + (f"; sections missing: {', '.join(map(str, missing))}" if missing else "")
    counts = table.counts.get((run.judge, run.bench))
    if counts is None:
        return "–"
    return f"{counts.used}/{counts.total} rows scored"


def run_summary(page: RunPage, table: Table) -> dict:
    run = page.run
    return {"judge": run.judge, "bench": run.bench, "bench_title": bench_title(run.bench), "href": page.href,
            "model": run_model(run), "rows": len(run.rows), "counts": counts_text(table, run.judge, run.bench),
            "statuses": {k: v for k, v in status_counts(run).items() if v},
            "coverage": coverage_text(run, table)}


def scatter(run: Run) -> str:
    rows = run.rows
    if not run.pairwise:
        points = [Point(r.gold, r.prediction, r.id) for r in rows if r.gold is not None and r.prediction is not None]
        labels = ("gold score", "prediction", f"{run.judge} on {bench_title(run.bench)}: prediction against gold")
    else:
        sides: dict[str, dict[str, float]] = {}
        for r in rows:
            if r.prediction is not None and r.pair is not None:
                sides.setdefault(r.pair.pair_id, {})[r.pair.side] = r.prediction
        points = [Point(s["chosen"], s["rejected"], pid) for pid, s in sides.items()
                  if "chosen" in s and "rejected" in s]
        labels = ("chosen response's score", "rejected response's score",
                  f"{run.judge} on {bench_title(run.bench)}: below the diagonal the chosen response won")
    if not points:
        return ""
    low, high = run.manifest.scale or (1, 5)
    return scatter_svg(points, (float(low), float(high)), *labels)


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Nested JSON as ``a.b.c: value`` lines, numbers to 4 significant digits."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return [(prefix, ", ".join(_scalar(v) for v in value))]
    if isinstance(value, list):
        return [(prefix, json.dumps(value))]
    return [(prefix, _scalar(value))]


def _scalar(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def identity_text(run: Run) -> str:
    """The run's identity, fingerprint and creation time, pretty-printed, secrets replaced by ***."""
    manifest = run.manifest
    block = {"fingerprint": manifest.fingerprint, "created": manifest.created, "identity": manifest.identity,
             "model_note": manifest.model_note}
    return json.dumps(redact({k: v for k, v in block.items() if v is not None}), indent=2, ensure_ascii=False)


def sessions(run: Run) -> list[dict]:
    out = []
    for session in run.manifest.sessions:
        command = redact(session.get("command") or [])
        out.append({"started": session.get("started", "–"), "host": session.get("host", "–"),
                    "command": " ".join(map(str, command)), "new_samples": session.get("new_samples", "–"),
                    "seconds": session.get("seconds", "–"), "device": session.get("device", "–")})
    return out


def metrics_lines(run: Run) -> list[tuple[str, str]]:
    """metrics.json as written by the run, less what the table and coverage already show in full."""
    metrics = {k: v for k, v in run.metrics.raw.items() if k not in ("coverage", "judge", "bench")}
    return flatten(metrics)


def diagnostics_lines(folder: Path) -> list[tuple[str, str]] | None:
    path = folder / DIAGNOSTICS
    if not path.is_file():
        return None
    try:
        return flatten(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        from ..runs import RunFormatError

        raise RunFormatError(f"{path}: not valid JSON: {exc}") from exc
