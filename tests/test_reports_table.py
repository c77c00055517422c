"""Table 2 layout, bold/underline placement and the four output formats, on hand-made runs."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports_helpers import GOLD, absolute_rows, make_runs, write_run
from tract_eval.reports.render import render, to_latex, to_markdown
from tract_eval.reports.runs import RunFormatError, collect_runs
from tract_eval.reports.table import AVERAGE, Column, build_table


@pytest.fixture
def runs(tmp_path):
    return collect_runs([make_runs(tmp_path / "runs")])


def test_columns_follow_table2_layout(runs):
    table = build_table(runs, ["r", "rho"])
    assert table.judges == ["alpha", "beta", "gamma"]
    assert [(c.group, c.measure) for c in table.columns] == [
        ("vicuna", "r"), ("vicuna", "rho"), ("mt-bench", "r"), ("mt-bench", "rho"),
        (AVERAGE, "r"), (AVERAGE, "rho"),
        ("rewardbench", "Chat"), ("rewardbench", "Chat Hard"), ("rewardbench", "Safety"),
        ("rewardbench", "Reasoning"), ("rewardbench", "Score")]
    assert table.averaged == ["vicuna", "mt-bench"]


def test_values_recomputed_from_predictions(runs):
    table = build_table(runs, ["r", "tau", "rmse"])
    beta = next(r for r in runs if r.judge == "beta" and r.bench == "vicuna")
    gold = np.array([r.gold for r in beta.rows if r.prediction is not None])
    pred = np.array([r.prediction for r in beta.rows if r.prediction is not None])
    assert table.cells["beta", Column("vicuna", "r")].estimate.value == pytest.approx(stats.pearsonr(gold, pred)[0])
    assert table.cells["beta", Column("vicuna", "tau")].estimate.value == pytest.approx(stats.kendalltau(gold, pred)[0])
    assert table.cells["beta", Column("vicuna", "rmse")].estimate.value == pytest.approx(
        np.sqrt(np.mean((gold - pred) ** 2)))
    average = table.cells["beta", Column(AVERAGE, "r")].estimate.value
    assert average == pytest.approx(np.mean([table.cells["beta", Column(b, "r")].estimate.value
                                             for b in ("vicuna", "mt-bench")]))
    counts = table.counts["beta", "vicuna"]
    assert (counts.used, counts.total, counts.parse_failures) == (9, 10, 1)
    rb = {m: table.cells["alpha", Column("rewardbench", m, accuracy=True)].estimate.value
          for m in ("Chat", "Reasoning", "Score")}
    # Reasoning: subsets weighted by reward-bench's EXAMPLE_COUNTS: math-prm 4/4 (984), hep-python a tie
    # (164), hep-go a win (164)
    reasoning = (984 * 1.0 + 164 * 0.5 + 164 * 1.0) / (984 + 164 + 164)
    assert rb == pytest.approx({"Chat": 1.0, "Reasoning": reasoning, "Score": (3 + reasoning) / 4})


def test_rewardbench_columns_agree_with_package_metrics(runs):
    from tract_eval.metrics import pairwise_metrics

    table = build_table(runs, ["r"])
    for run in (r for r in runs if r.bench == "rewardbench"):
        expected = pairwise_metrics(run.rows, run.section_scheme())
        cell = lambda m: table.cells[run.judge, Column("rewardbench", m, accuracy=True)].estimate.value  # noqa: E731
        assert cell("Score") == pytest.approx(expected["score"])
        for section, values in expected["sections"].items():
            assert cell(section) == pytest.approx(values["accuracy"])


def test_best_bold_second_underlined(runs):
    table = build_table(runs, ["r", "rmse"])
    for column in table.columns:
        ranks = {j: table.cells[j, column].rank for j in table.judges}
        assert ranks == {"alpha": 1, "beta": 2, "gamma": 0}, column
    text = to_markdown(table)
    alpha = next(line for line in text.splitlines() if line.startswith("| alpha"))
    beta = next(line for line in text.splitlines() if line.startswith("| beta"))
    gamma = next(line for line in text.splitlines() if line.startswith("| gamma"))
    assert alpha.count("**") == 2 * len(table.columns) and "<u>" not in alpha
    assert beta.count("<u>") == len(table.columns) and "**" not in beta
    assert "**" not in gamma and "<u>" not in gamma
    assert "9/10, 1 pf" in text and "18/18 pairs, 0 pf" in text
    assert "Average over Vicuna Bench, MT Bench." in text


def test_rmse_lower_is_better_and_ties_share_rank(tmp_path):
    out = tmp_path / "runs"
    write_run(out, "a", "vicuna", absolute_rows(GOLD, [g + 0.5 for g in GOLD]))
    write_run(out, "b", "vicuna", absolute_rows(GOLD, [g - 0.5 for g in GOLD]))  # same r, same RMSE
    write_run(out, "c", "vicuna", absolute_rows(GOLD, [g + (0.9 if i % 2 else -0.9) for i, g in enumerate(GOLD)]))
    table = build_table(collect_runs([out]), ["r", "rmse"])
    assert {j: table.cells[j, Column("vicuna", "rmse")].rank for j in "abc"} == {"a": 1, "b": 1, "c": 2}
    assert {j: table.cells[j, Column("vicuna", "r")].rank for j in "abc"} == {"a": 1, "b": 1, "c": 2}


def test_partial_average_is_marked_and_not_ranked(runs, tmp_path):
    write_run(tmp_path / "more", "delta", "vicuna", absolute_rows(GOLD, GOLD))  # perfect, but one bench only
    table = build_table(runs + collect_runs([tmp_path / "more"]), ["r"])
    cell = table.cells["delta", Column(AVERAGE, "r")]
    assert cell.partial and cell.rank == 0
    assert table.cells["alpha", Column(AVERAGE, "r")].rank == 1
    assert table.cells["delta", Column("vicuna", "r")].rank == 1
    text = to_markdown(table)
    assert "1.000*" in text and "* delta: Average over Vicuna Bench only (not ranked)." in text
    assert table.cells.get(("delta", Column("mt-bench", "r"))) is None
    assert re.search(r"\| delta .*–", text)


def test_latex_structure(runs):
    table = build_table(runs, ["r", "rho", "tau"], ci=True, resamples=50)
    tex = to_latex(table, caption_prefix="Embedded model, 10 samples_per bench & more")
    assert tex.count(r"\toprule") == 2 and tex.count(r"\midrule") == 2 and tex.count(r"\bottomrule") == 2
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3
    for line in body:
        assert line.count("&") == len(table.columns) and line.endswith(r"\\")
    header = next(line for line in tex.splitlines() if line.startswith("Judge & $r$"))
    assert header.count("&") == len(table.columns)
    assert r"\multicolumn{3}{c}{Vicuna Bench}" in tex and r"\cmidrule(lr){2-4}" in tex
    assert r"\multicolumn{5}{c}{RewardBench}" in tex
    assert tex.count(r"\textbf{") == len(table.columns) and tex.count(r"\underline{") == len(table.columns)
    assert r"samples\_per bench \& more" in tex
    assert r"{\scriptsize [" in tex
    assert r"\begin{table}" in tex and tex.count(r"\end{table}") == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (apt-get install texlive-latex-recommended)")
def test_latex_compiles(runs, tmp_path):
    table = build_table(runs, ["r", "rho", "rmse"], ci=True, resamples=50)
    (tmp_path / "table.tex").write_text(to_latex(table, caption_prefix="judge_x & 100% test", standalone=True))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    assert "Overfull" not in done.stdout


def test_csv_and_json_carry_the_same_numbers(runs):
    table = build_table(runs, ["r", "rho"], ci=True, resamples=50)
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    payload = json.loads(render(table, "json"))
    for judge in table.judges:
        for column in table.columns:
            value = table.cells[judge, column].estimate.value
            assert frame.set_index("judge").loc[judge, f"{column.group}:{column.measure}"] == pytest.approx(value)
            entry = payload["cells"][judge][column.group][column.measure]
            assert entry["value"] == pytest.approx(value)
            assert entry["low"] <= value + 1e-9 or column.group == AVERAGE
        assert frame.set_index("judge").loc[judge, "vicuna:n_total"] == 10
    assert payload["counts"]["beta"]["vicuna"] == {"used": 9, "total": 10, "parse_failures": 1, "pairwise": False}
    assert payload["averaged"] == ["vicuna", "mt-bench"]


def test_malformed_rows_name_file_line_and_field(tmp_path):
    folder = write_run(tmp_path / "runs", "a", "vicuna", absolute_rows(GOLD, GOLD))
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"prediction": 2.0', '"prediction": "2"')
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFormatError, match=r"predictions.jsonl: line 3 field 'prediction'"):
        collect_runs([tmp_path / "runs"])
    lines[2] = "{not json"
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFormatError, match=r"line 3 is not valid JSON"):
        collect_runs([tmp_path / "runs"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_runs([tmp_path / "nowhere"])


def test_same_judge_and_bench_twice_is_refused(tmp_path):
    write_run(tmp_path / "one", "a", "vicuna", absolute_rows(GOLD, GOLD))
    write_run(tmp_path / "two", "a", "vicuna", absolute_rows(GOLD, GOLD))
    with pytest.raises(RunFormatError, match="appears twice"):
        collect_runs([tmp_path / "one", tmp_path / "two"])


def test_long_csv_and_the_model_that_ran(tmp_path, capsys):
    import io
    import json

    import pandas as pd

    from reports_helpers import make_runs
    from tract_eval.cli import main

    runs = make_runs(tmp_path / "runs")
    manifest = runs / "alpha" / "vicuna" / "manifest.json"
    manifest.write_text(json.dumps({"judge": {"name": "alpha"}, "backend": {"model": "embedded:SmolLM2"},
                                    "model_note": "card model 'x/y' unavailable; running on embedded:SmolLM2"}))
    assert main(["report", str(runs), "--format", "long-csv", "--ci", "--resamples", "20"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == ["judge", "model", "bench", "metric", "value", "ci_low", "ci_high", "n"]
    row = frame[(frame.judge == "alpha") & (frame.bench == "vicuna") & (frame.metric == "r")].iloc[0]
    assert row.model == "embedded:SmolLM2" and row.n == 10 and row.ci_low <= row.value <= row.ci_high
    beta = frame[(frame.judge == "beta") & (frame.bench == "vicuna") & (frame.metric == "rho")].iloc[0]
    assert beta.n == 9 and beta.model == "unknown"
    assert set(frame[frame.judge == "alpha"].bench) == {"vicuna", "mt-bench", "Average", "rewardbench"}
    assert main(["report", str(runs)]) == 0
    text = capsys.readouterr().out
    assert "- alpha: embedded:SmolLM2, unknown (NOTE: card model 'x/y' unavailable; running on embedded:SmolLM2)" in text
