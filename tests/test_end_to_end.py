"""`tract-eval run` on the embedded model and the real shared data; plugin judges via entry points."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tract_eval.cli import main

pytestmark = pytest.mark.slow


def test_run_tract_on_three_benchmarks(tmp_path, data_dir, embedded_backend, capsys):
    out = tmp_path / "runs"
    args = ["run", "--judge", "tract", "--bench", "vicuna,mt-bench,rewardbench", "--limit", "2",
            "--max-new-tokens", "16", "--out", str(out), "--data-dir", str(data_dir)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tract-eval summary" in printed and "rewardbench" in printed
    for bench, n in (("vicuna", 2), ("mt-bench", 2), ("rewardbench", 4)):
        folder = out / "tract" / bench
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == n
        for row in rows:
            assert row["status"] == "ok" and 1 <= row["prediction"] <= 5
            assert row["input"].startswith("<|im_start|>") and row["input"].endswith("<|im_start|>assistant\n")
            assert row["cots"][0].endswith("So the overall score is ")
            assert set(row["score_probs"][0]) == {"1", "2", "3", "4", "5"}
            assert row["prompt_tokens"] > 100 and row["generated_tokens"] <= 16 and row["seconds"] > 0
        metrics = json.loads((folder / "metrics.json").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["backend"]["model"].startswith("embedded:") and manifest["judge"]["sampling"]["top_p"] == 0.9
        assert manifest["bench"]["checksums"] and all(v == "verified" for v in manifest["bench"]["checksums"].values())
        if bench == "rewardbench":
            assert metrics["n_pairs"] == 2 and set(metrics["sections"]) <= {"Chat", "Chat Hard", "Safety", "Reasoning"}
        else:
            assert metrics["n"] == 2 and "pearson" in metrics and "kendall_p" in metrics
    # the same command again judges nothing new
    assert main(args) == 0
    rows = (out / "tract" / "vicuna" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_decode_and_zero_shot_judges(tmp_path, data_dir, embedded_backend):
    out = tmp_path / "runs"
    common = ["--bench", "vicuna", "--limit", "2", "--out", str(out), "--data-dir", str(data_dir)]
    assert main(["run", "--judge", "rail,ce-decode", *common]) == 0
    # the card's 7B model cannot be had offline: the run goes on with the embedded model and says so.
    # Two short rows of own data: a verdict-less output is regenerated 5 times (the card's max_retries),
    # each a fresh prefill, so Vicuna's ~700-token prompts made this the suite's slowest step
    short = tmp_path / "short.jsonl"
    rows = (("2+2?", "4", 5), ("Capital of France?", "Lyon", 1))
    short.write_text("".join(json.dumps({"instruction": q, "response": a, "rubric": "Is it correct?", "score": s})
                             + "\n" for q, a, s in rows))
    assert main(["run", "--judge", "prometheus-2", "--max-new-tokens", "8", "--bench", str(short),
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "prometheus-2" / "short" / "manifest.json").read_text())
    assert "prometheus-eval/prometheus-7b-v2.0" in manifest["model_note"] and "embedded" in manifest["model_note"]
    # score-only: TRACT's score-only prompt, the score read at the first assistant token after the bridge
    rail = [json.loads(x) for x in (out / "rail" / "vicuna" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["cots"] == [" "] and r["generated_tokens"] == 0 for r in rail)
    # the reference's empty assistant turn, continued as its transformers 4.47 rendered it: closed on ChatML
    assert all("Write a score betweeb 1 to 5" in r["input"] and r["input"].endswith("<|im_start|>assistant\n<|im_end|>")
               for r in rail)
    decode = [json.loads(x) for x in (out / "ce-decode" / "vicuna" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["input"] == rail[i]["input"] and r["score_probs"] == [] for i, r in enumerate(decode))
    assert all(r["generated_tokens"] == 1 and r["cots"][0].startswith(" ") for r in decode)
    for r in decode:  # a parsed score, or a counted failure; never a silent drop
        assert (r["status"] == "ok") == (r["prediction"] is not None)
    prom = [json.loads(x) for x in (out / "prometheus-2" / "short" / "predictions.jsonl").read_text().splitlines()]
    assert len(prom) == 2 and all("You are a fair judge assistant" in r["input"] for r in prom)


PLUGIN = textwrap.dedent('''
    from tract_eval.judge_config import JudgeConfig
    from tract_eval.judges import Judge


    class TerseRailJudge(Judge):
        """Zero-shot RAIL with a strict system prompt, shipped by a third-party package."""

        @classmethod
        def default_config(cls):
            return JudgeConfig(name="terse-rail", description="plugin: zero-shot RAIL, strict system prompt",
                               protocol="score-only-rail", renormalize=True,
                               system_prompt="You are a strict grader.")
''')


def test_entry_point_plugin_judge(tmp_path, data_dir, embedded_backend, monkeypatch):
    """A fresh interpreter lists the installed plugin; the run then happens in this process on the session's
    model (the same entry-point discovery, without a second model load)."""
    from tract_eval.judges import JUDGES

    package = tmp_path / "plugin"
    package.mkdir()
    (package / "terse_rail_judge.py").write_text(PLUGIN)
    (package / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "terse-rail-judge"
        version = "0.0.1"
        [project.entry-points."tract_eval.judges"]
        terse-rail = "terse_rail_judge:TerseRailJudge"
        [tool.setuptools]
        py-modules = ["terse_rail_judge"]
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([sys.executable, "-m", "tract_eval.cli", "list", "judges"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "terse-rail" in listed and "plugin: zero-shot RAIL" in listed
    out = tmp_path / "runs"
    monkeypatch.syspath_prepend(str(site))  # as PYTHONPATH above: entry points are read from sys.path
    monkeypatch.setattr(JUDGES, "_items", dict(JUDGES._items))  # the plugin leaves with this test
    monkeypatch.setattr(JUDGES, "_plugins_loaded", False)
    assert "terse-rail" not in JUDGES._items
    assert main(["run", "--judge", "terse-rail", "--bench", "vicuna", "--limit", "2", "--out", str(out),
                 "--data-dir", str(data_dir)]) == 0
    rows = [json.loads(x) for x in (out / "terse-rail" / "vicuna" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("You are a strict grader." in r["input"] for r in rows)
    assert all(1 <= r["prediction"] <= 5 for r in rows)
