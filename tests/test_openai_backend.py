"""OpenAI-compatible backend against a real llama.cpp server (llama-cpp-python) on 127.0.0.1."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from backend_servers import REPO, FlakyProxy, free_port, openai_server, stop_process, venv_python
from tract_eval.backends import create_backend
from tract_eval.backends.base import GenerationRequest, ScoreRequest
from tract_eval.backends.openai_backend import _score_token_after_delimiter
from tract_eval.backends.options import add_backend_flags, backend_options_from_args
from tract_eval.errors import ConfigError

DELIMITER = "So the overall score is"
# llama.cpp runs the Q4_1 weights natively, multiplying them with activations it rounds to 8 bits
# (Q8_1); transformers multiplies the dequantised float32 weights with float32 activations. Measured
# on Vicuna prompts: up to 0.042 in renormalised candidate probability (0.14 in expected score),
# and llama.cpp itself moves by ~0.02 when its prompt cache is reused; float32 vLLM vs transformers
# on the same weights agree to 1e-5 (tests/test_vllm_backend.py).
PROB_TOLERANCE = 0.08


# -- fast: pure functions -----------------------------------------------------------
def _tokens(*texts):
    return [SimpleNamespace(token=t, logprob=-1.0, top_logprobs=[]) for t in texts]


def test_score_token_is_the_first_non_blank_token_after_the_last_delimiter():
    tokens = _tokens("Good", ". ", "So the overall score is", " 3", ". Again: ", "So the overall", " score is", " ", "4")
    offset, token = _score_token_after_delimiter(tokens, DELIMITER)
    assert token.token == "4"
    assert "".join(t.token for t in tokens)[:offset].endswith(DELIMITER + " ")
    assert _score_token_after_delimiter(_tokens("no", " delimiter", " 4"), DELIMITER) is None
    assert _score_token_after_delimiter(_tokens("So the overall score is"), DELIMITER) is None  # truncated


def test_backend_flags_reach_backend_options():
    import argparse

    parser = argparse.ArgumentParser()
    add_backend_flags(parser)
    args = parser.parse_args(["--base-url", "http://127.0.0.1:1/v1", "--concurrency", "3", "--openai-mode", "single",
                              "--backend-option", "prices={m: {prompt: 1.5, completion: 2}}"])
    assert backend_options_from_args(args) == {
        "base_url": "http://127.0.0.1:1/v1", "concurrency": 3, "mode": "single",
        "prices": {"m": {"prompt": 1.5, "completion": 2}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        backend_options_from_args(parser.parse_args(["--backend-option", "oops"]))


# -- slow: a real llama.cpp server ----------------------------------------------------
@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from tract_eval.models import embedded_model_path

    python = venv_python("llama")
    port = free_port()
    command = [str(python), "-m", "llama_cpp.server", "--model", str(embedded_model_path()), "--logits_all", "true",
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--verbose", "false"]
    with openai_server(command, port, tmp_path_factory.mktemp("llama") / "server.log", start_timeout=180) as url:
        yield url


@pytest.fixture(scope="module")
def llama_backend(llama_server):
    # llama.cpp serves one request at a time and keeps one prompt cache: interleaving prompts would
    # make it prefill (with full-vocabulary logits at every position) again and again
    return create_backend("openai", None, base_url=llama_server, concurrency=1)


@pytest.fixture(scope="module")
def vicuna_prompts(llama_backend, data_dir):
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge

    judge = build_judge("tract", backend=llama_backend)
    samples = load_benchmark("vicuna", data_dir).select(2)
    return judge, samples, [judge.build_input(s) for s in samples]


def _expected(probs: dict) -> float:
    return sum(score * p for score, p in probs.items())


def _renormalised(logprobs: dict) -> dict:
    raw = {s: math.exp(v) for s, v in logprobs.items()}
    return {s: p / sum(raw.values()) for s, p in raw.items()}


@pytest.mark.slow
def test_continue_mode_agrees_with_transformers(llama_backend, embedded_backend, vicuna_prompts):
    """Sampled CoTs from the server, then the same prompt + CoT read by transformers."""
    from tract_eval.judge_config import SeededSampling

    judge, samples, prompts = vicuna_prompts
    assert llama_backend.server == "llama.cpp" and llama_backend.describe()["mode"] == "continue"
    candidates = judge.candidates
    from tract_eval.candidates import derive_score_candidates

    assert candidates == derive_score_candidates(embedded_backend.tokenizer())  # same tokenizer, same ids
    requests = [GenerationRequest(key=s.id, prompt=p, n=2, candidates=candidates, cut_marker=judge.config.cut_marker)
                for s, p in zip(samples, prompts)]
    finished = []
    out = llama_backend.generate(requests, SeededSampling(max_new_tokens=40, seed=0),
                                 on_done=lambda i, c: finished.append(i))
    assert sorted(finished) == [0, 1] and [len(c) for c in out] == [2, 2]
    worst = worst_score = 0.0
    for request, completions in zip(requests, out):
        for completion in completions:
            assert completion.text.endswith(DELIMITER + candidates.bridge_text)
            assert completion.finish_reason in ("delimiter", "eos", "length") and not completion.missing_candidates
            cot = completion.text[: -len(candidates.bridge_text)]
            reference = embedded_backend.score([ScoreRequest(request.prompt, cot, candidates, judge.config.cut_marker)])[0]
            ours, theirs = _renormalised(completion.candidate_logprobs), _renormalised(reference.candidate_logprobs)
            worst = max(worst, max(abs(ours[s] - theirs[s]) for s in candidates.scores))
            worst_score = max(worst_score, abs(_expected(ours) - _expected(theirs)))
    print(f"continue mode vs transformers: max |p diff| over {sum(map(len, out))} CoTs = {worst:.4f}, "
          f"max |expected score diff| = {worst_score:.4f}")
    assert worst <= PROB_TOLERANCE


@pytest.mark.slow
def test_supplied_cot_readout_agrees_with_transformers(llama_backend, embedded_backend, vicuna_prompts, data_dir):
    """A real GPT-4 annotation as the CoT: no sampling involved, so both read the very same text."""
    judge, samples, prompts = vicuna_prompts
    rows = json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())[:2]
    requests = [ScoreRequest(p, row["gpt4_feedback"][0], judge.candidates, judge.config.cut_marker)
                for p, row in zip(prompts, rows)]
    ours = llama_backend.score(requests)
    theirs = embedded_backend.score(requests)
    diffs = [abs(_renormalised(a.candidate_logprobs)[s] - _renormalised(b.candidate_logprobs)[s])
             for a, b in zip(ours, theirs) for s in judge.candidates.scores]
    assert [a.text for a in ours] == [b.text for b in theirs] and all(a.forced_text for a in ours)
    print(f"supplied CoT readout vs transformers: max |p diff| = {max(diffs):.4f}")
    assert max(diffs) <= PROB_TOLERANCE


@pytest.mark.slow
def test_retries_on_429_500_dropped_and_stalled_requests(llama_backend, llama_server, vicuna_prompts):
    judge, _, prompts = vicuna_prompts
    request = ScoreRequest(prompts[0], "Fine answer.", judge.candidates, judge.config.cut_marker)
    expected = llama_backend.score([request])[0].candidate_logprobs
    with FlakyProxy(llama_server, [429, 500, "drop", 503, "stall"], stall_seconds=6) as proxy:
        flaky = create_backend("openai", None, base_url=proxy.base_url, max_retries=6, timeout=3)
        started = time.perf_counter()
        got = flaky.score([request])[0].candidate_logprobs
        seconds = time.perf_counter() - started
    assert proxy.failures_sent == 5
    assert flaky.describe()["usage"]["retries"] == 5
    assert got == pytest.approx(expected, abs=1e-6)
    assert seconds < 60


@pytest.mark.slow
def test_gives_up_after_max_retries_and_keeps_what_finished(llama_server, vicuna_prompts):
    from tract_eval.judge_config import SeededSampling

    _, samples, prompts = vicuna_prompts
    # decode requests: one POST each; the first passes, the second meets only errors
    with FlakyProxy(llama_server, [None] + [500] * 10) as proxy:
        backend = create_backend("openai", None, base_url=proxy.base_url, max_retries=2, concurrency=1)
        finished = []
        with pytest.raises(RuntimeError, match="failed after 2 retries"):
            backend.generate([GenerationRequest(key=s.id, prompt=p) for s, p in zip(samples, prompts)],
                             SeededSampling(max_new_tokens=8, seed=0), on_done=lambda i, c: finished.append(i))
    assert finished == [0]
    assert proxy.posts == 1 + 3


def _cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tract_eval.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kwargs)


@pytest.mark.slow
def test_cli_run_killed_midway_resumes_without_loss(llama_server, tmp_path, data_dir):
    secret = "sk-test-do-not-log-7f3a"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRACT_EVAL_DATA_DIR": str(data_dir), "JUDGE_KEY": secret}
    out = tmp_path / "runs"
    args = ["run", "--judge", "tract", "--bench", "vicuna", "--limit", "4", "--out", str(out), "--backend", "openai",
            "--base-url", llama_server, "--api-key-env", "JUDGE_KEY", "--max-new-tokens", "24",
            "--concurrency", "1", "--batch-size", "4"]
    predictions = out / "tract" / "vicuna" / "predictions.jsonl"
    proc = _cli(args, env)
    deadline = time.monotonic() + 300
    while not (predictions.is_file() and predictions.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no sample finished within 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = predictions.read_text()
    kept = [line for line in before.splitlines() if line.strip()]
    assert 1 <= len(kept) < 4, "the kill came too late to test resuming"

    proc = _cli(args, env)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    after = predictions.read_text().splitlines()
    assert after[: len(kept)] == kept  # nothing finished before the kill was redone or lost
    ids = [json.loads(line)["id"] for line in after]
    assert len(ids) == 4 and len(set(ids)) == 4
    manifest_text = (out / "tract" / "vicuna" / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    backend = manifest["backend"]
    assert backend["backend"] == "openai" and backend["mode"] == "continue" and backend["api_key_env"] == "JUDGE_KEY"
    assert backend["usage"]["calls"] >= 2 * (4 - len(kept)) and backend["usage"]["completion_tokens"] > 0
    for text in (manifest_text, stdout.decode(), stderr.decode(), predictions.read_text()):
        assert secret not in text


@pytest.mark.slow
def test_single_mode_reads_top_logprobs_after_the_delimiter(llama_server):
    """Chat API, one request per CoT. SmolLM2 answers "The overall score is N." to this prompt,
    so that phrase is the delimiter here; the reading must equal a continue-mode readout of the
    same text from the same server."""
    from tract_eval.candidates import derive_score_candidates
    from tract_eval.judge_config import SeededSampling
    from tract_eval.models import embedded_model_path

    served_id = str(embedded_model_path())  # llama.cpp names the model by its path
    single = create_backend("openai", None, base_url=llama_server, mode="single", top_logprobs=20,
                            prices={served_id: {"prompt": 0.5, "completion": 1.5}})
    continuing = create_backend("openai", None, base_url=llama_server)
    candidates = derive_score_candidates(single.tokenizer(), "The overall score is")
    prompt = single.render_chat([{"role": "user", "content": "Say: So the overall score is 4"}])
    out = single.generate([GenerationRequest(key="q", prompt=prompt, n=2, candidates=candidates)],
                          SeededSampling(temperature=0.0, max_new_tokens=16, seed=0))[0]
    for completion in out:
        assert completion.finish_reason == "delimiter" and completion.text.endswith("The overall score is ")
        assert set(completion.candidate_logprobs) | set(completion.missing_candidates) == set(candidates.scores)
        reference = continuing.score([ScoreRequest(prompt, completion.text.rstrip(), candidates)])[0]
        ours, theirs = _renormalised(completion.candidate_logprobs), _renormalised(reference.candidate_logprobs)
        assert max(abs(ours[s] - theirs[s]) for s in ours) <= PROB_TOLERANCE
    described = single.describe()
    usage = described["usage"]
    assert described["mode"] == "single" and usage["calls"] == 2
    assert described["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5) / 1e6)
    with pytest.raises(ValueError, match="mode 'continue'"):
        single.score([ScoreRequest(prompt, "x", candidates)])
