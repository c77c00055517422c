"""One typed override path: flags and Python keywords -> JudgeOverrides -> build_judge -> a final config."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

import tract_eval
from tract_eval import api
from tract_eval.cli import main
from tract_eval.commands import JUDGE_FLAGS, NO_JUDGE_FLAG, add_judge_overrides, judge_overrides
from tract_eval.errors import ConfigError, UnknownNameError
from tract_eval.judge_config import JudgeConfig, JudgeOverrides, SamplingConfig
from tract_eval.judges import base as judge_base
from tract_eval.judges import build_judge, load_judge_card

from test_runner import LengthBackend


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_judge_setting_is_one_override_and_has_decided_about_its_flag():
    # generated from the config: a new JudgeConfig (or sampling) field is an override at once...
    assert _fields(JudgeOverrides) == (_fields(JudgeConfig) - {"name", "sampling"}) | _fields(SamplingConfig) | {
        "run_name"}
    # ...and must be given a flag or a reason for none, not both
    assert not set(JUDGE_FLAGS) & set(NO_JUDGE_FLAG)
    assert set(JUDGE_FLAGS) | set(NO_JUDGE_FLAG) == _fields(JudgeOverrides)
    assert all(f.default is None for f in dataclasses.fields(JudgeOverrides))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_judge_overrides(parser)
    return parser


def test_each_flagged_setting_has_exactly_one_flag_by_its_name():
    options = [o for action in _parser()._actions for o in action.option_strings]
    for name in JUDGE_FLAGS:
        flag = "--" + name.replace("_", "-")
        assert options.count(flag) == 1, flag
        assert next(a for a in _parser()._actions if flag in a.option_strings).dest == name
    for name in NO_JUDGE_FLAG:
        assert "--" + name.replace("_", "-") not in options or name == "max_retries"  # the backend's flag


def test_flags_to_overrides_to_config_round_trip():
    argv = ["--model", "m", "--device", "cpu", "--dtype", "float32", "--n-cot", "3", "--seed", "7",
            "--temperature", "0.5", "--top-p", "0.8", "--repetition-penalty", "1.1", "--max-new-tokens", "9",
            "--batch-size", "auto", "--renormalize", "--readout", "sampled", "--score-only-anchor",
            "generation-prompt", "--parse-failure-policy", "fallback", "--fallback-score", "2",
            "--verdict-parser", "library", "--model-args", "revision=main", "--backend-option", "x=1"]
    overrides = judge_overrides(_parser().parse_args(argv))
    assert overrides == JudgeOverrides(
        model="m", device="cpu", dtype="float32", n_cot=3, seed=7, temperature=0.5, top_p=0.8,
        repetition_penalty=1.1, max_new_tokens=9, batch_size="auto", renormalize=True, readout="sampled",
        score_only_anchor="generation-prompt", parse_failure_policy="fallback", fallback_score=2.0,
        verdict_parser="library", backend_options={"model_args": {"revision": "main"}, "x": 1})
    config = load_judge_card("tract").apply(overrides)
    assert (config.model, config.n_cot, config.seed, config.batch_size, config.renormalize) == ("m", 3, 7, "auto", True)
    assert config.sampling == SamplingConfig(temperature=0.5, top_p=0.8, repetition_penalty=1.1, max_new_tokens=9)
    assert config.backend_options == {**load_judge_card("tract").backend_options, **overrides.backend_options}
    # no flag given: nothing overridden, the card as it is
    untouched = judge_overrides(_parser().parse_args([]))
    assert untouched == JudgeOverrides() and load_judge_card("tract").apply(untouched) == load_judge_card("tract")


def test_python_keywords_are_the_same_overrides():
    by_flags = judge_overrides(_parser().parse_args(["--n-cot", "2", "--temperature", "0.5", "--renormalize"]))
    assert JudgeOverrides.from_settings({"n_cot": 2, "temperature": 0.5, "renormalize": True}) == by_flags
    assert build_judge("tract", n_cot=2, temperature=0.5, renormalize=True).config == build_judge(
        "tract", by_flags).config
    # keywords win over the typed object; run_name renames the judge (its folder), the card's errors keep its name
    judge = build_judge("tract", JudgeOverrides(n_cot=2, run_name="mine"), n_cot=4)
    assert (judge.name, judge.config.n_cot) == ("mine", 4)
    with pytest.raises(ConfigError, match="judge 'tract': n_cot must be >= 1"):
        build_judge("tract", JudgeOverrides(n_cot=0, run_name="mine"))


@pytest.mark.parametrize("call", [
    lambda: tract_eval.grade("q", "a", "r", bogus=1),
    lambda: tract_eval.evaluate("tract", "vicuna", bogus=1),
    lambda: build_judge("tract", bogus=1),
    lambda: load_judge_card("tract").with_overrides(bogus=1),
])
def test_an_unknown_keyword_is_the_same_one_line_error(call):
    with pytest.raises(UnknownNameError, match="^unknown judge setting 'bogus'$"):
        call()


def test_a_built_judges_config_is_final():
    judge = build_judge("tract", backend=LengthBackend(), run_name="renamed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        judge.config.n_cot = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        judge.config.sampling.temperature = 0.0
    with pytest.raises(AttributeError):
        judge.config = judge.config.with_overrides(n_cot=5)
    assert judge.name == "renamed"
    with pytest.raises(TypeError, match="a backend name is a setting"):
        build_judge("tract", backend="openai")


@pytest.fixture()
def length_model(monkeypatch):
    """Every judge runs on the in-process LengthBackend: `tract-eval run` in a fraction of a second."""
    monkeypatch.setattr(judge_base, "create_backend", lambda *args, **kwargs: LengthBackend())


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_is_checked_once_with_one_message(capsys, monkeypatch, data_dir, limit):
    monkeypatch.setattr(judge_base, "create_backend", lambda *a, **k: pytest.fail("a model was about to load"))
    assert main(["run", "--judge", "tract", "--bench", "vicuna", "--data-dir", str(data_dir),
                 "--limit", str(limit)]) == 2
    cli = capsys.readouterr().err.strip()
    with pytest.raises(ConfigError) as caught:
        tract_eval.evaluate("tract", "vicuna", data_dir=data_dir, limit=limit)
    assert cli.endswith(str(caught.value)) and len(cli.splitlines()) == 1
    assert str(caught.value) == f"--limit must be >= 1, a whole number, not {limit}"


def test_run_goes_through_evaluate(capsys, monkeypatch, tmp_path, data_dir, length_model):
    calls = []
    real = api.evaluate
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main(["run", "--judge", "tract,rail", "--bench", "vicuna,mt-bench", "--data-dir", str(data_dir),
                 "--limit", "2", "--out", str(tmp_path), "--n-cot", "1"]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 1 and calls[0]["overrides"].n_cot == 1
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1:3] for row in rows] == [
        [f" {j:<5} ", f" {b:<8} "] for j in ("tract", "rail") for b in ("vicuna", "mt-bench")]
    assert all((tmp_path / j / b / "results.json").is_file() for j in ("tract", "rail") for b in ("vicuna", "mt-bench"))


def test_evaluate_reports_each_run_and_its_progress(tmp_path, data_dir, length_model):
    import contextlib

    seen, progress = [], []

    @contextlib.contextmanager
    def progress_for(label, total):
        progress.append((label, total))
        yield lambda k: None

    metrics = tract_eval.evaluate("tract", "vicuna", data_dir=data_dir, limit=3, out=tmp_path, run_name="mine",
                                  progress_for=progress_for, on_run=lambda j, b, r: seen.append((j.name, b.name, r)))
    assert progress == [("mine × vicuna", 3)]
    assert [(j, b) for j, b, _ in seen] == [("mine", "vicuna")] and seen[0][2].metrics == metrics["vicuna"]


def test_the_seed_travels_with_the_sampling_settings_and_stays_a_top_level_card_setting(tmp_path):
    from tract_eval.judge_config import SeededSampling

    config = build_judge("tract", seed=3, temperature=0.5, max_new_tokens=9).config
    assert config.seeded_sampling == SeededSampling(**dataclasses.asdict(config.sampling), seed=3)
    assert (config.seeded_sampling.temperature, config.seeded_sampling.max_new_tokens) == (0.5, 9)
    assert "seed" not in dataclasses.asdict(config.sampling)  # the card's sampling block is unchanged
    card = tmp_path / "seeded.yaml"
    card.write_text("seed: 4\nsampling:\n  seed: 4\n")
    with pytest.raises(ConfigError, match=r"unknown sampling settings \['seed'\]"):
        load_judge_card(str(card))
