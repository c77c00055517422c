"""Render a Table as markdown (tabulate), booktabs LaTeX (jinja2 template), CSV (pandas) or JSON."""
from __future__ import annotations

import io
import json

from ..errors import ConfigError
from .table import AVERAGE, Cell, Column, Table, bench_title

FORMATS = ("markdown", "latex", "csv", "long-csv", "json")
TEMPLATE = "table2.tex.j2"


def caption(table: Table, prefix: str = "") -> str:
    """Plain-text notes every format carries: what the Average covers, marks, intervals."""
    parts = [prefix.strip()] if prefix.strip() else []
    if table.averaged:
        parts.append(f"Average over {', '.join(bench_title(b) for b in table.averaged)}.")
    for judge, present in table.partial_averages.items():
        parts.append(f"* {judge}: Average over {', '.join(bench_title(b) for b in present)} only (not ranked).")
    parts.append("Bold: best; underlined: second best (per column).")
    pairwise = list(dict.fromkeys(bench_title(c.group) for c in table.columns if c.accuracy))
    if pairwise:
        parts.append(f"{', '.join(pairwise)}: accuracy in %, chosen scored above rejected, ties count half.")
    if table.confidence is not None:
        parts.append(f"Brackets: {table.confidence:.0%} percentile bootstrap intervals over samples "
                     f"({table.resamples} resamples, seed {table.seed}; pairs resampled within sections).")
    return " ".join(parts)


def _cell_text(table: Table, judge: str, column: Column, bold, underline) -> str:
    cell = table.cells.get((judge, column), Cell())
    text = cell.text(column)
    if cell.rank == 1:
        text = bold(text)
    elif cell.rank == 2:
        text = underline(text)
    if cell.partial:
        text += "*"
    interval = cell.interval(column)
    return f"{text} {interval}" if interval else text


def counts_text(table: Table, judge: str, bench: str) -> str:
    """"used/total[ pairs], N pf" of one run (every format and ``tract-eval view`` show this)."""
    counts = table.counts.get((judge, bench))
    if counts is None:
        return "–"
    unit = " pairs" if counts.pairwise else ""
    return f"{counts.used}/{counts.total}{unit}, {counts.parse_failures} pf"


def to_markdown(table: Table, caption_prefix: str = "") -> str:
    from tabulate import tabulate

    headers = ["Judge"] + [f"{bench_title(c.group)} {c.label('markdown')}" for c in table.columns]
    rows = [[judge] + [_cell_text(table, judge, c, lambda t: f"**{t}**", lambda t: f"<u>{t}</u>")
                       for c in table.columns] for judge in table.judges]
    counts = tabulate([[judge] + [counts_text(table, judge, b) for b in table.benches] for judge in table.judges],
                      headers=["Judge"] + [bench_title(b) for b in table.benches], tablefmt="github")
    models = "".join(f"- {judge}: {table.judge_models(judge)}\n" for judge in table.judges)
    return (tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n\n"
            + caption(table, caption_prefix) + "\n\nSamples used / total and parse failures (pf):\n\n"
            + counts + "\n\nModels:\n\n" + models)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table, caption_prefix: str = "", label: str = "tab:judges", standalone: bool = False) -> str:
    import jinja2

    from ..cards import card_dir
    from ..prompts import UnsafeTemplate, sandboxed_environment

    # LaTeX is full of braces and percent signs: use delimiters that cannot clash with it
    env = sandboxed_environment(card_dir("reports") / "templates",
                                block_start_string="<%", block_end_string="%>",
                                variable_start_string="<<", variable_end_string=">>",
                                comment_start_string="<#", comment_end_string="#>")
    env.filters["tex"] = latex_escape
    groups = []
    start = 2  # column 1 holds the judge names
    for group, columns in table.groups():
        groups.append({"title": bench_title(group), "span": len(columns), "first": start,
                       "last": start + len(columns) - 1})
        start += len(columns)

    def cell(judge: str, column: Column) -> str:
        # the interval text holds only digits, dots and dashes: no escaping needed
        text = _cell_text(table, judge, column, lambda t: rf"\textbf{{{t}}}", lambda t: rf"\underline{{{t}}}")
        if "[" in text:
            value, interval = text.split(" ", 1)
            text = rf"{value} {{\scriptsize {interval}}}"
        return text.replace("–", "--").replace("*", r"$^*$")

    values = dict(
        standalone=standalone,
        caption=latex_escape(caption(table, caption_prefix)),
        label=label,
        groups=groups,
        headers=[c.label("latex") for c in table.columns],
        rows=[{"judge": judge, "cells": [cell(judge, c) for c in table.columns]} for judge in table.judges],
        benches=[bench_title(b) for b in table.benches],
        counts=[{"judge": judge, "cells": [counts_text(table, judge, b) for b in table.benches]}
                for judge in table.judges],
    )
    try:
        return env.get_template(TEMPLATE).render(**values)
    except jinja2.exceptions.SecurityError as exc:
        raise UnsafeTemplate(f"report template {card_dir('reports') / 'templates' / TEMPLATE} refused: {exc} "
                             "(templates render in a sandbox: no private attributes, no code)") from None


def _column_key(column: Column) -> str:
    return f"{column.group}:{column.measure}"


def to_records(table: Table) -> list[dict]:
    """One flat record per judge (the wide CSV layout)."""
    records = []
    for judge in table.judges:
        record: dict = {"judge": judge}
        for column in table.columns:
            cell = table.cells.get((judge, column))
            est = cell.estimate if cell else None
            record[_column_key(column)] = est.value if est else None
            if table.confidence is not None:
                record[_column_key(column) + ":ci_low"] = est.low if est else None
                record[_column_key(column) + ":ci_high"] = est.high if est else None
        for bench in table.benches:
            counts = table.counts.get((judge, bench))
            record[f"{bench}:n"] = counts.used if counts else None
            record[f"{bench}:n_total"] = counts.total if counts else None
            record[f"{bench}:parse_failures"] = counts.parse_failures if counts else None
        records.append(record)
    return records


def to_long_records(table: Table) -> list[dict]:
    """One record per (judge, benchmark, metric): judge, model, bench, metric, value, ci_low, ci_high, n."""
    records = []
    for judge in table.judges:
        for column in table.columns:
            cell = table.cells.get((judge, column))
            if cell is None or cell.estimate is None:
                continue
            if column.group == AVERAGE:
                benches = table.partial_averages.get(judge, table.averaged)
                n = sum(table.counts[judge, b].used for b in benches if (judge, b) in table.counts)
                model = ", ".join(sorted({table.models.get((judge, b), "unknown") for b in benches}))
            else:
                counts = table.counts.get((judge, column.group))
                n = counts.used if counts else None
                model = table.models.get((judge, column.group), "unknown")
            records.append({"judge": judge, "model": model, "bench": column.group, "metric": column.measure,
                            "value": cell.estimate.value, "ci_low": cell.estimate.low, "ci_high": cell.estimate.high,
                            "n": n})
    return records


def to_long_csv(table: Table) -> str:
    import pandas as pd

    columns = ["judge", "model", "bench", "metric", "value", "ci_low", "ci_high", "n"]
    buffer = io.StringIO()
    pd.DataFrame(to_long_records(table), columns=columns).to_csv(buffer, index=False)
    return buffer.getvalue()


def to_csv(table: Table) -> str:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(to_records(table)).to_csv(buffer, index=False)
    return buffer.getvalue()


def to_json(table: Table, caption_prefix: str = "") -> str:
    cells = {}
    for judge in table.judges:
        for column in table.columns:
            cell = table.cells.get((judge, column))
            if cell is None:
                continue
            entry = {**cell.estimate.to_dict(), "rank": cell.rank}
            if cell.partial:
                entry["partial_average"] = table.partial_averages[judge]
            cells.setdefault(judge, {}).setdefault(column.group, {})[column.measure] = entry
    payload = {
        "judges": table.judges,
        "benchmarks": table.benches,
        "averaged": table.averaged,
        "columns": [{"group": c.group, "measure": c.measure, "accuracy": c.accuracy} for c in table.columns],
        "cells": cells,
        "counts": {judge: {b: vars(c) for (j, b), c in table.counts.items() if j == judge} for judge in table.judges},
        "models": {judge: {b: m for (j, b), m in table.models.items() if j == judge} for judge in table.judges},
        "model_notes": {judge: {b: n for (j, b), n in table.model_notes.items() if j == judge}
                        for judge in table.judges},
        "confidence": table.confidence,
        "resamples": table.resamples,
        "seed": table.seed,
        "caption": caption(table, caption_prefix),
    }
    return json.dumps(payload, indent=2) + "\n"


def render(table: Table, fmt: str, caption_prefix: str = "", standalone: bool = False) -> str:
    if fmt == "markdown":
        return to_markdown(table, caption_prefix)
    if fmt == "latex":
        return to_latex(table, caption_prefix, standalone=standalone)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "long-csv":
        return to_long_csv(table)
    if fmt == "json":
        return to_json(table, caption_prefix)
    raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


__all__ = ["AVERAGE", "FORMATS", "caption", "counts_text", "latex_escape", "render", "to_csv", "to_json",
           "to_latex", "to_long_csv", "to_long_records", "to_markdown", "to_records"]
