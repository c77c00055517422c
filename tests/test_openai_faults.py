"""The OpenAI backend against a local fault-injecting server: retried faults end with the numbers of a
clean run; malformed answers become counted failures quoting the server; partial top-k is never ok."""
from __future__ import annotations

import json

import pytest

from fake_openai import MALFORMED, FaultyOpenAIServer
from tract_eval.benchmarks import load_benchmark
from tract_eval.judges import JudgeOverrides, build_judge
from tract_eval.records import read_predictions
from tract_eval.runner import run_benchmark

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # starts a (local, in-process) server
pytest.importorskip("openai")


def openai_judge(url, tokenizer_dir, **settings):
    options = {"base_url": url, "tokenizer": str(tokenizer_dir), "max_retries": 3, "timeout": 0.5, "concurrency": 4}
    return build_judge("tract", JudgeOverrides(backend="openai"), backend_options=options, max_new_tokens=8,
                       **settings)


def scores(out_dir):
    return {r.id: (r.status, r.prediction, r.per_cot) for r in read_predictions(out_dir / "predictions.jsonl")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tokenizer_dir, data_dir):
    with FaultyOpenAIServer() as server:
        result = run_benchmark(openai_judge(server.base_url, tokenizer_dir, n_cot=2),
                               load_benchmark("vicuna", data_dir), tmp_path_factory.mktemp("clean"), limit=6)
    rows = scores(result.out_dir)
    assert all(status == "ok" for status, _, _ in rows.values())
    return rows


@pytest.mark.parametrize("faults", [
    [429, 500, 503, "drop", 429, "stall", 500],
    ["badjson", "html", "nochoices", "nulllogprobs", 503, "badjson"],
])
def test_retried_faults_end_with_the_clean_numbers(tmp_path, tokenizer_dir, data_dir, clean, faults):
    with FaultyOpenAIServer(list(faults)) as server:
        judge = openai_judge(server.base_url, tokenizer_dir, n_cot=2)
        result = run_benchmark(judge, load_benchmark("vicuna", data_dir), tmp_path, limit=6)
        assert sum(server.injected.values()) == len(faults)
    assert scores(result.out_dir) == clean
    print(f"\nfaults injected: {dict(server.injected)}; rows lost or changed: 0")
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    usage = manifest["backend"]["usage"]
    malformed = sum(f in MALFORMED for f in faults)
    assert usage["malformed"] == malformed and usage["retries"] >= len(faults) - malformed


def test_random_faults_across_a_run_end_with_the_clean_numbers(tmp_path, tokenizer_dir, data_dir, clean):
    """Every request may fail (transient or malformed), at most twice, so 3 retries always get through."""
    import random
    from collections import Counter

    rng, seen = random.Random(5), Counter()
    kinds = [429, 500, 503, "drop", "badjson", "html", "nochoices"]

    def faults(number, body):
        key = json.dumps(body, sort_keys=True)
        if seen[key] < 2 and rng.random() < 0.4:
            seen[key] += 1
            readout = body.get("max_tokens") == 1
            return rng.choice(kinds + (["nulllogprobs"] if readout else []))
        return None

    with FaultyOpenAIServer(faults) as server:
        result = run_benchmark(openai_judge(server.base_url, tokenizer_dir, n_cot=2), load_benchmark("vicuna", data_dir),
                               tmp_path, limit=6)
    assert scores(result.out_dir) == clean
    total = sum(server.injected.values())
    print(f"\nfaults injected: {total} {dict(server.injected)} over {server.posts} requests; rows lost or changed: 0")
    assert total >= 5


def test_malformed_answers_that_persist_are_counted_failures_with_an_excerpt(tmp_path, tokenizer_dir, data_dir):
    vicuna = load_benchmark("vicuna", data_dir)
    victim = vicuna.samples[1].fields.response[:60]

    def faults(number, body):  # every score readout of one sample answers with an HTML page
        return "html" if body.get("max_tokens") == 1 and victim in body["prompt"] else None

    with FaultyOpenAIServer(faults) as server:
        result = run_benchmark(openai_judge(server.base_url, tokenizer_dir), vicuna, tmp_path, limit=6)
    print(f"\nfaults injected: {dict(server.injected)}; counted failures: 1 of 6 rows")
    rows = read_predictions(result.out_dir / "predictions.jsonl")
    failed = [r for r in rows if r.status != "ok"]
    assert len(rows) == 6 and [r.id for r in failed] == [vicuna.samples[1].id]
    for row in failed:
        assert row.status == "parse_failure" and row.prediction is None
        assert "<html><body>502 Bad Gateway" in row.errors[0] and "4 attempts" in row.errors[0]
    assert result.metrics["n"] == 6 - len(failed) and result.metrics["parse_failures"] == len(failed)


@pytest.mark.parametrize("policy", ["fail", "renormalize"])
def test_missing_candidates_are_recorded_never_ok(tmp_path, tokenizer_dir, data_dir, policy):
    def faults(number, body):
        return "partial" if body.get("max_tokens") == 1 else None

    with FaultyOpenAIServer(faults) as server:
        judge = openai_judge(server.base_url, tokenizer_dir, **({"partial_candidates": policy}))
        result = run_benchmark(judge, load_benchmark("vicuna", data_dir), tmp_path, limit=3)
    print(f"\nfaults injected: {dict(server.injected)}; rows marked partial_candidates: 3 of 3")
    rows = read_predictions(result.out_dir / "predictions.jsonl")
    assert [r.status for r in rows] == ["partial_candidates"] * 3
    assert all(r.missing_candidates == [[1, 5]] for r in rows)
    if policy == "fail":  # the default for RAIL judges: no score from an incomplete distribution
        assert all(r.prediction is None for r in rows) and result.metrics["n"] == 0
    else:
        assert all(2 <= r.prediction <= 4 for r in rows)
    assert result.metrics["statuses"] == {"partial_candidates": 3}


def test_credentials_in_the_url_never_reach_the_manifest(tmp_path, tokenizer_dir, data_dir):
    with FaultyOpenAIServer() as server:
        url = server.base_url.replace("http://", "http://user:SECRET@")
        result = run_benchmark(openai_judge(url, tokenizer_dir), load_benchmark("vicuna", data_dir), tmp_path, limit=1)
    text = (result.out_dir / "manifest.json").read_text()
    assert "SECRET" not in text and "http://***@127.0.0.1" in text


def test_a_server_that_states_its_context_gets_too_long_rows(tmp_path, tokenizer_dir, data_dir):
    vicuna = load_benchmark("vicuna", data_dir)
    with FaultyOpenAIServer(max_model_len=300) as server:  # shorter than most Vicuna prompts
        judge = openai_judge(server.base_url, tokenizer_dir)
        result = run_benchmark(judge, vicuna, tmp_path, limit=4)
        assert judge.backend.context_length() == 300
    rows = read_predictions(result.out_dir / "predictions.jsonl")
    assert {r.status for r in rows} <= {"ok", "too_long"} and result.metrics["statuses"].get("too_long")
    assert all(r.prompt_tokens + r.meta["generation_budget"] > 300 for r in rows if r.status == "too_long")
