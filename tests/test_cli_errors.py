"""User errors: exit status 2, one line naming what and where, no traceback (``-v`` shows it), no model load."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tract_eval
from tract_eval.judges import base as judge_base
from tract_eval.cli import main


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Every error below must be found before a backend (and so a model) is created."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to load")

    monkeypatch.setattr(judge_base, "create_backend", refuse)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    return err


def test_unknown_names_and_bad_flags_are_one_line(capsys, tmp_path, data_dir):
    assert "unknown judge 'nope'; known: ce-decode" in _error(capsys, ["run", "--judge", "nope", "--bench", "vicuna"])
    assert "unknown benchmark 'nope'" in _error(capsys, ["run", "--judge", "tract", "--bench", "nope"])
    assert "--shard 5/2: need 0 <= i < n" in _error(
        capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--shard", "5/2", "--data-dir", str(data_dir)])
    assert "--shard takes i/n" in _error(capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--shard", "x"])
    assert "n_cot must be >= 1" in _error(capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--n-cot", "0"])
    assert "--limit must be >= 1" in _error(capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--limit", "0"])
    assert f"--data-dir {tmp_path / 'none'}: no such folder" in _error(
        capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--data-dir", str(tmp_path / "none")])


def test_a_typo_in_a_card_names_the_file_and_setting(capsys, tmp_path):
    card = tmp_path / "mine.yaml"
    card.write_text("name: mine\ntemprature: 0.5\n")
    err = _error(capsys, ["run", "--judge", str(card), "--bench", "vicuna"])
    assert str(card) in err and "unknown judge settings ['temprature']" in err
    card.write_text("name: [unclosed\n")
    assert f"{card}: line 2, column 1: not valid YAML: expected ',' or ']'" in _error(capsys, ["run", "--judge", str(card), "--bench", "vicuna"])


def test_verbose_after_the_subcommand_shows_the_traceback(capsys):
    assert main(["run", "--judge", "nope", "--bench", "vicuna", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UnknownNameError" in err and err.rstrip().endswith("(or a path to a YAML card)")


def test_version_and_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "tract_eval", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"tract-eval {tract_eval.__version__}"
    done = subprocess.run([sys.executable, "-m", "tract_eval", "run", "--judge", "nope", "--bench", "vicuna", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown judge 'nope'" in done.stderr


def test_run_refusals_exit_2_naming_why(capsys, tmp_path, data_dir, monkeypatch):
    """A busy folder, a folder of another identity, bad sampling values: one line, status 2, no model."""
    from tract_eval.records import RunLock
    from tract_eval.runner import run_benchmark
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge
    from test_runner import LengthBackend

    common = ["--bench", "vicuna", "--limit", "1", "--out", str(tmp_path), "--data-dir", str(data_dir)]
    for flag, value, message in (("--temperature", "-1", "temperature must be >= 0"), ("--top-p", "5", "top_p must be in"),
                                 ("--max-new-tokens", "-3", "max_new_tokens must be >= 1")):
        assert message in _error(capsys, ["run", "--judge", "tract", flag, value, *common])
    with RunLock(tmp_path / "tract" / "vicuna"):
        assert "is being written by pid" in _error(capsys, ["run", "--judge", "tract", *common])
    run_benchmark(build_judge("tract", backend=LengthBackend()), load_benchmark("vicuna", data_dir), tmp_path, limit=1)
    err = _error(capsys, ["run", "--judge", "tract", "--seed", "3", *common])
    assert "holds a run of another identity" in err and "judge.seed: 0 -> 3" in err


BARS_SCRIPT = """
import sys
from tract_eval.cli import main
main(sys.argv[1:])
from tqdm.auto import tqdm                                   # transformers' GGUF conversion bar
from transformers.utils import logging as transformers_logging  # its weight-loading bars
from huggingface_hub.utils import tqdm as hub_tqdm           # downloads
for label, bar in (("gguf", tqdm), ("weights", transformers_logging.tqdm), ("hub", hub_tqdm)):
    for _ in bar(range(2), desc=f"BAR-{label}"):
        pass
"""


@pytest.mark.parametrize("flags", [["-q", "list", "backends"], ["list", "backends", "-q"], ["-v", "list", "backends"],
                                   ["list", "backends"]])
def test_quiet_turns_off_the_model_and_data_loading_progress_bars(flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "HF_DATASETS_DISABLE"))}
    done = subprocess.run([sys.executable, "-c", BARS_SCRIPT, *flags], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    bars = [line for line in done.stderr.replace("\r", "\n").splitlines() if "BAR-" in line]
    if "-q" in flags:
        assert bars == []
    else:  # -v and the default keep them, one per library
        assert {line.split(":")[0] for line in bars} == {"BAR-gguf", "BAR-weights", "BAR-hub"}


@pytest.mark.slow
def test_quiet_run_on_the_embedded_model_leaves_stderr_empty(tmp_path):
    """The real thing: loading the GGUF model shows transformers' conversion and weight bars unless -q."""
    data = tmp_path / "one.jsonl"
    data.write_text('{"instruction": "2+2?", "response": "4", "rubric": "Correct?", "score": 5}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "HF_DATASETS_DISABLE"))}
    done = subprocess.run([sys.executable, "-m", "tract_eval", "run", "--judge", "rail", "--bench", str(data),
                           "--out", str(tmp_path / "runs"), "-q"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "one" in done.stdout
