"""Own data as a benchmark: four file formats through ``datasets``, column mapping, plain-text rubrics,
scales, predictions-only runs, and errors that name the file, row and field."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tract_eval.benchmarks import DataFormatError, load_benchmark
from tract_eval.cli import main
from tract_eval.errors import ConfigError, InputNotFoundError
from tract_eval.records import Prediction

ROWS = [
    {"instruction": "What is 2+2?", "response": "4", "rubric": "Is the answer correct?", "score": 5,
     "reference": "4"},
    {"instruction": "Capital of France?", "response": "Lyon", "rubric": "Is the answer correct?", "score": 1,
     "reference": None},
]


def _write(path, rows):
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_gives_the_same_samples(tmp_path, suffix):
    bench = load_benchmark(str(_write(tmp_path / f"mine{suffix}", ROWS)))
    assert bench.name == "mine" and bench.kind == "absolute" and bench.card.scale == (1, 5)
    first, second = bench.samples
    assert [s.id for s in bench.samples] == ["1", "2"] and [s.gold for s in bench.samples] == [5.0, 1.0]
    assert first.fields.rubric == "[Is the answer correct?]"  # plain text becomes the criteria
    assert first.fields.reference_answer == "4" and second.fields.reference_answer is None
    assert bench.has_gold


def test_columns_scale_descriptions_and_no_gold(tmp_path):
    rows = [{"q": "Q", "a": "A", "criteria": "Helpful?", "label": 9, **{f"score{k}_description": f"d{k}" for k in
                                                                         range(1, 11)}}]
    bench = load_benchmark(str(_write(tmp_path / "t.jsonl", rows)), scale="1-10",
                           columns="instruction=q,response=a,rubric=criteria,score=label")
    sample = bench.samples[0]
    assert sample.gold == 9.0 and sample.fields.scale == (1, 10)
    assert sample.fields.rubric.splitlines()[:2] == ["[Helpful?]", "Score 1: d1"]
    assert sample.fields.rubric.splitlines()[-1] == "Score 10: d10"
    block = "[Correct?]\nScore 1: wrong\nScore 2: right"
    bench = load_benchmark(str(_write(tmp_path / "n.jsonl", [{"instruction": "Q", "response": "A", "rubric": block}])),
                           scale="1-2")
    assert bench.samples[0].fields.rubric == block and not bench.has_gold
    metrics = bench.metrics([Prediction(id="1", prediction=1.5, gold=None, status="ok")])
    assert metrics["note"] == "no gold scores: predictions only" and metrics["mean_prediction"] == 1.5


def test_errors_name_file_row_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], "response": ""}])
    with pytest.raises(DataFormatError, match=rf"{path}: row 2: field 'response': needs non-empty text"):
        load_benchmark(str(path))
    path = _write(tmp_path / "out.jsonl", [{**ROWS[0], "score": 7}])
    with pytest.raises(DataFormatError, match=r"row 1: field 'score': 7 is outside the scale 1-5 \(set it with --scale"):
        load_benchmark(str(path))
    path = _write(tmp_path / "cols.csv", [{"prompt": "Q", "response": "A", "rubric": "R"}])
    with pytest.raises(DataFormatError, match=r"cols.csv: field 'instruction': no such column \(map yours with "
                                              r"--columns instruction=NAME\); the table has: prompt, response, rubric"):
        load_benchmark(str(path))
    path = _write(tmp_path / "dup.jsonl", [{**ROWS[0], "id": "a"}, {**ROWS[1], "id": "a"}])
    with pytest.raises(DataFormatError, match=r"row 2: field 'id': repeats id 'a' of row 1"):
        load_benchmark(str(path))
    (tmp_path / "broken.jsonl").write_text('{"instruction": "Q"\n')
    with pytest.raises(DataFormatError, match=r"broken.jsonl: cannot read it as json"):
        load_benchmark(str(tmp_path / "broken.jsonl"))
    with pytest.raises(InputNotFoundError, match="no such file"):
        load_benchmark(str(tmp_path / "missing.csv"))
    with pytest.raises(ConfigError, match="--columns: unknown role"):
        load_benchmark(str(_write(tmp_path / "ok.jsonl", ROWS)), columns="critera=x")
    with pytest.raises(ConfigError, match="--scale takes LOW-HIGH"):
        load_benchmark(str(tmp_path / "ok.jsonl"), scale="ten")
    with pytest.raises(ConfigError, match="hf:ORG/NAME"):
        load_benchmark("hf:no-slash")


def test_hub_dataset_offline_is_named(monkeypatch):
    from tract_eval.benchmarks import DataUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match=r"hub dataset someorg/mydata: the Hugging Face hub is unreachable"):
        load_benchmark("hf:someorg/mydata:test")


def test_cli_own_data_errors_before_any_model(tmp_path, capsys, monkeypatch):
    from tract_eval.judges import base as judge_base

    monkeypatch.setattr(judge_base, "create_backend", lambda *a, **k: pytest.fail("a model was about to load"))
    path = _write(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], "score": "high"}])
    assert main(["run", "--judge", "tract", "--bench", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"tract-eval run: error: {path}: row 2: field 'score': needs a number, got 'high' "
                           "(drop the column to write predictions only)")
    assert main(["run", "--judge", "tract", "--bench", "vicuna", "--scale", "1-10"]) == 2
    assert "--columns and --scale apply to your own data" in capsys.readouterr().err


def test_user_cards_define_benchmarks_and_their_report_place(tmp_path):
    from tract_eval.benchmarks import benchmark_names, load_card
    from tract_eval.cards import _user_dirs, add_card_dir
    from tract_eval.reports.runs import bench_order, in_average
    from tract_eval.reports.table import bench_title

    folder = tmp_path / "cards"
    (folder / "benchmarks").mkdir(parents=True)
    _write(folder / "benchmarks" / "qa.csv", [{"question": "Q", "answer": "A", "rubric": "Good?", "grade": 3}])
    (folder / "benchmarks" / "my-qa.yaml").write_text(
        "title: My QA\nkind: absolute\nloader: table\nfiles: [qa.csv]\nscale: [1, 4]\naverage: true\norder: 0\n"
        "options: {columns: {instruction: question, response: answer, score: grade}}\n")
    add_card_dir(folder)
    try:
        assert "my-qa" in benchmark_names() and load_card("my-qa").title == "My QA"
        bench = load_benchmark("my-qa")
        assert bench.samples[0].gold == 3.0 and bench.samples[0].fields.scale == (1, 4)
        assert bench_order(["vicuna", "rewardbench", "my-qa", "zzz"]) == ["my-qa", "vicuna", "rewardbench", "zzz"]
        assert in_average("my-qa") and in_average("vicuna") and not in_average("rewardbench")
        assert bench_title("my-qa") == "My QA" and bench_title("zzz") == "zzz"
        (folder / "benchmarks" / "typo.yaml").write_text("title: T\nkind: absolute\nloader: table\nfiels: [x]\n")
        with pytest.raises(ConfigError, match=r"typo.yaml: unknown benchmark card settings \['fiels'\]"):
            load_card("typo")
    finally:
        _user_dirs.clear()


HUB_OFFLINE_SCRIPT = r'''
import json, shutil, sys
from pathlib import Path

import datasets
from datasets.packaged_modules.json.json import Json

from tract_eval.benchmarks import DataUnavailable, load_benchmark
from tract_eval.cli import main

# What an earlier online `load_dataset("acme/graded")` leaves in $HF_HOME/datasets: the prepared split
# (acme___graded/<config>/<version>/<commit>/graded-train.arrow + dataset_info.json), built here by datasets'
# own json builder from a local file, since nothing may be downloaded
source, home = Path(sys.argv[1]), Path(sys.argv[2])
builder = Json(cache_dir=str(home / "build"), dataset_name="graded", data_files={"train": str(source)},
               hash="0123abcd")
builder.download_and_prepare()
shutil.copytree(builder.cache_dir, home / "datasets" / "acme___graded" / "default" / "0.0.0" / "0123abcd")
assert Path(datasets.config.HF_DATASETS_CACHE) == home / "datasets", datasets.config.HF_DATASETS_CACHE

bench = load_benchmark("hf:acme/graded", columns="instruction=question,response=answer,rubric=criteria,score=label",
                       scale="1-10")
out = {"source": bench.located.source, "name": bench.name, "load": bench.spec,
       "rows": [[s.id, s.fields.instruction, s.fields.response, s.fields.rubric, s.gold] for s in bench.samples]}
for spec in ("hf:acme/graded:test", "hf:acme/elsewhere"):
    try:
        load_benchmark(spec)
    except DataUnavailable as exc:
        out[spec] = str(exc)
out["cli"] = main(["run", "--judge", "tract", "--bench", "hf:acme/graded", "--out", str(home / "runs")])
print(json.dumps(out))
'''


def test_hub_dataset_loads_offline_from_the_datasets_cache(tmp_path):
    """``--bench hf:ORG/NAME`` with no network: datasets' real offline path (HF_HUB_OFFLINE=1, a fresh HF_HOME
    holding what an earlier online load cached), then our validation and rows."""
    import os
    import subprocess
    import sys

    source = _write(tmp_path / "graded.jsonl", [
        {"question": "What is 2+2?", "answer": "4", "criteria": "Is it right?", "label": 9},
        {"question": "Capital of France?", "answer": "Lyon", "criteria": "Is it right?", "label": 2}])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run([sys.executable, "-c", HUB_OFFLINE_SCRIPT, str(source), str(tmp_path / "hf")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["source"] == "hub:acme/graded:train" and out["name"] == "graded"
    assert out["load"]["bench"] == "hf:acme/graded" and out["load"]["scale"] == [1, 10]
    assert out["rows"] == [["1", "What is 2+2?", "4", "[Is it right?]", 9.0],
                           ["2", "Capital of France?", "Lyon", "[Is it right?]", 2.0]]
    assert out["hf:acme/graded:test"].startswith("hub dataset acme/graded: the Hugging Face hub is unreachable "
                                                 "(or HF_HUB_OFFLINE is set) and the datasets cache")
    assert "split 'test'" in out["hf:acme/graded:test"]
    assert "hub dataset acme/elsewhere" in out["hf:acme/elsewhere"]
    # validation on the cached rows, before any model loads: the default column names are not in this table
    assert out["cli"] == 2
    assert ("tract-eval run: error: hub:acme/graded:train: field 'instruction': no such column (map yours with "
            "--columns instruction=NAME); the table has: answer, criteria, label, question") in done.stderr
