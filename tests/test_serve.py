"""``tract-eval serve`` as a real server: a subprocess on a free 127.0.0.1 port, called over HTTP with httpx.

One served judge (the embedded model, 4 new tokens, seed 7, an API key) answers every test but the
shutdown ones, which start their own to stop. Scores are checked against ``tract_eval.grade_many``
on the same rows in this process.
"""
from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import math
import os
import signal
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import tract_eval
from backend_servers import VENVS
from serve_helpers import running_server, start_server, stop, free_port, wait_ready
from tract_eval.cli import main
from tract_eval.serve.app import _split_response

KEY_ENV, KEY = "TRACT_EVAL_SERVE_TEST_KEY", "s3cret-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUBRIC = "Is the response correct and helpful?"
NEW_TOKENS, SEED, MAX_ITEMS = 4, 7, 20
ITEMS = [
    {"instruction": "What is 2+2?", "response": "4"},
    {"instruction": "Name a primary colour.", "response": "Blue.", "reference": "Red, yellow or blue."},
    {"instruction": "Say hello politely.", "response": "Go away."},
    {"instruction": "Capital of France?", "response": "Paris is the capital of France."},
]
SERVER_ARGS = ["--judge", "tract", "--max-new-tokens", str(NEW_TOKENS), "--seed", str(SEED), "--rubric", RUBRIC,
               "--max-items", str(MAX_ITEMS), "--max-body-mb", "0.1", "--api-key-env", KEY_ENV, "-q"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import os

    env = dict(os.environ, **{KEY_ENV: KEY})
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(SERVER_ARGS, log, env) as (url, proc):
        yield url
    assert KEY not in log.read_text()  # the key is never logged


@pytest.fixture(scope="module")
def reference():
    """grade_many on ITEMS with the server's judge settings (ids 1..4: the rows' places)."""
    rows = [{**item, "rubric": RUBRIC} for item in ITEMS]
    return tract_eval.grade_many(rows, judge="tract", max_new_tokens=NEW_TOKENS, seed=SEED)


def _grade(url: str, items: list[dict], timeout: float = 900, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/grade", json={"items": items, **extra}, headers=AUTH, timeout=timeout)


def _same(result: dict, grade, tolerance: float = 1e-6) -> None:
    assert result["status"] == grade.status == "ok"
    assert result["cots"] == grade.cots
    assert math.isclose(result["score"], grade.score, abs_tol=tolerance)
    assert {int(k): v for k, v in result["probs"].items()}.keys() == grade.probs.keys()
    assert all(math.isclose(result["probs"][str(k)], p, abs_tol=tolerance) for k, p in grade.probs.items())


# -- no model: argument checks and the OpenRLHF split ---------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--api-key-env", "TRACT_EVAL_NO_SUCH_VARIABLE"], "--api-key-env TRACT_EVAL_NO_SUCH_VARIABLE"),
    (["--port", "70000"], "--port 70000"),
    (["--max-items", "0"], "--max-items"),
    (["--scale", "5-1"], "--scale"),
])
def test_serve_refuses_bad_flags_before_loading_a_model(capsys, argv, message):
    assert main(["serve", "--judge", "tract", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_openrlhf_split_takes_the_text_after_the_prompt():
    assert _split_response("<user>Hi</user> Hello!", "<user>Hi</user>") == " Hello!"
    assert _split_response("truncated prompt + answer", "a prompt that is not there") == "truncated prompt + answer"


# -- the served judge -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_health_names_judge_model_scale_and_readiness(server):
    health = httpx.get(f"{server}/health").json()
    assert health["ready"] is True and health["judge"] == "tract" and health["scale"] == [1, 5]
    assert health["model"] == "embedded:SmolLM2-135M-Instruct.Q4_1" and health["max_new_tokens"] == NEW_TOKENS


@pytest.mark.slow
def test_grade_equals_grade_many(server, reference):
    answer = _grade(server, ITEMS, n_cot=1, seed=SEED)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["id"] for r in results] == ["1", "2", "3", "4"]
    for result, grade in zip(results, reference):
        _same(result, grade)


@pytest.mark.slow
def test_sixteen_concurrent_clients_are_batched_together_and_score_as_grade_many(server, reference):
    before = httpx.get(f"{server}/health").json()

    def one(k: int) -> httpx.Response:  # item k % 4 under its id in ITEMS, so its CoT's random stream is the same
        with httpx.Client(headers=AUTH, timeout=900) as client:
            return client.post(f"{server}/v1/grade", json={"items": [{**ITEMS[k % 4], "id": str(k % 4 + 1)}]})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    assert [a.status_code for a in answers] == [200] * 16
    for k, answer in enumerate(answers):
        # the same CoTs (each row's random stream); float32 sums over a batch of 16 rows (here) and of 4
        # (grade_many) differ, by up to 1.6e-5 seen over 4 decode steps: the 1e-6 equality is for equal batches
        _same(answer.json()["results"][0], reference[k % 4], tolerance=1e-4)
    after = httpx.get(f"{server}/health").json()
    assert after["rows_judged"] - before["rows_judged"] == 16
    assert after["batches"] - before["batches"] <= 3  # one queue, not a model call per request


@pytest.mark.slow
def test_get_reward_follows_openrlhf_convention(server, reference):
    """The request OpenRLHF's client sends (openrlhf/utils/agent.py _fetch_rewards_via_http), re-built here."""
    item = ITEMS[1]
    payload = {"query": [item["instruction"] + item["response"]], "prompts": [item["instruction"]],
               "labels": [item["reference"]]}
    answer = httpx.post(f"{server}/get_reward", json=payload, headers=AUTH, timeout=900)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # one query, id "1": grade_many's first row with this item's texts is a different row, so grade it the same way
    expected = tract_eval.grade_many([{**item, "rubric": RUBRIC}], judge="tract", max_new_tokens=NEW_TOKENS,
                                     seed=SEED)[0]
    assert math.isclose(body["rewards"][0], expected.score, abs_tol=1e-6)
    assert math.isclose(body["scores"][0], (expected.score - 1) / 4, abs_tol=1e-6)
    assert body["statuses"] == ["ok"] and body["extra_logs"] == {"judge_scored": [1.0]}
    # the rubric can come with the request; an empty response is not judged, and says so
    payload = {"query": ["Q: hi A:", item["instruction"] + item["response"]], "prompts": ["Q: hi A:", item["instruction"]],
               "labels": [None, {"rubric": RUBRIC, "reference": item["reference"]}]}
    body = httpx.post(f"{server}/get_reward", json=payload, headers=AUTH, timeout=900).json()
    assert body["statuses"] == ["empty", "ok"] and body["rewards"][0] == 1.0 and body["extra_logs"]["judge_scored"] == [0.0, 1.0]


def _openrlhf_agent(monkeypatch):
    """OpenRLHF's client module, loaded by itself: its package __init__ imports deepspeed and more, so the
    package is stood in for and only utils/logging_utils.py and utils/agent.py run (they need aiohttp)."""
    folder = VENVS / "openrlhf"
    if not (folder / ".recipe").is_file():
        reason = f"OpenRLHF's client is not installed at {folder}: run  bash .ci/backends.sh openrlhf"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run installs it, so under CI this is an error)")
        pytest.skip(reason)
    # appended, so the test environment's own packages win over aiohttp's dependencies there
    monkeypatch.setattr(sys, "path", [*sys.path, str(folder)])
    root = str(folder / "openrlhf")
    for name, path in (("openrlhf", root), ("openrlhf.utils", f"{root}/utils")):
        package = types.ModuleType(name)
        package.__path__ = [path]
        monkeypatch.setitem(sys.modules, name, package)
    for name in ("openrlhf.utils.logging_utils", "openrlhf.utils.agent"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("openrlhf.utils.agent")


@pytest.mark.slow
def test_openrlhf_client_reads_the_rewards(server, monkeypatch):
    agent = _openrlhf_agent(monkeypatch)
    # OpenRLHF sends no key: its session gets the header, the request is its own
    monkeypatch.setattr(agent.aiohttp, "ClientSession", functools.partial(agent.aiohttp.ClientSession, headers=AUTH))
    executor = agent.SingleTurnAgentExecutor(f"{server}/get_reward")
    item = ITEMS[0]
    answers = asyncio.run(executor._fetch_rewards_via_http([item["instruction"] + item["response"]],
                                                           [item["instruction"]], [None]))
    expected = tract_eval.grade_many([{**item, "rubric": RUBRIC}], judge="tract", max_new_tokens=NEW_TOKENS,
                                     seed=SEED)[0]
    assert math.isclose(answers[0]["rewards"][0], expected.score, abs_tol=1e-6)
    assert answers[0]["scores"] is not None and answers[0]["extra_logs"]["judge_scored"] == [1.0]


@pytest.mark.slow
def test_bad_requests_get_their_status_and_the_server_stays_up(server):
    post = functools.partial(httpx.post, timeout=900)
    bad_json = post(f"{server}/v1/grade", content=b'{"items": [', headers={**AUTH, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    missing = post(f"{server}/v1/grade", json={"items": [{"instruction": "x"}]}, headers=AUTH)
    assert missing.status_code == 422 and missing.json()["error"].startswith("items[0].response")
    wrong = post(f"{server}/v1/grade", json={"items": [{"instruction": 3, "response": "y"}]}, headers=AUTH)
    assert wrong.status_code == 422 and wrong.json()["error"].startswith("items[0].instruction")
    empty = post(f"{server}/v1/grade", json={"items": [{"instruction": " ", "response": "y"}]}, headers=AUTH)
    assert empty.status_code == 422 and "instruction" in empty.json()["error"]
    not_list = post(f"{server}/get_reward", json={"query": "one text", "prompts": ["p"]}, headers=AUTH)
    assert not_list.status_code == 422 and not_list.json()["error"].startswith("query")
    too_many = post(f"{server}/v1/grade", json={"items": [ITEMS[0]] * (MAX_ITEMS + 1)}, headers=AUTH)
    assert too_many.status_code == 413 and "--max-items" in too_many.json()["error"]
    too_big = post(f"{server}/v1/grade", json={"items": [{"instruction": "x" * 200_000, "response": "y"}]}, headers=AUTH)
    assert too_big.status_code == 413
    chunked = post(f"{server}/v1/grade", content=iter([b'{"items": "' + b"x" * 60_000, b"x" * 60_000 + b'"}']),
                   headers={**AUTH, "Content-Type": "application/json"})  # no Content-Length: counted as read
    assert chunked.status_code == 413
    assert post(f"{server}/v1/grade", json={"items": [ITEMS[0]]}).status_code == 401
    assert post(f"{server}/v1/grade", json={"items": [ITEMS[0]]},
                headers={"Authorization": "Bearer " + KEY[:-1] + "X"}).status_code == 401
    assert post(f"{server}/get_reward", json={"query": ["a"], "prompts": ["b"]}).status_code == 401
    assert httpx.get(f"{server}/health").json()["ready"] is True


@pytest.mark.slow
def test_too_long_item_is_marked_and_the_others_scored(server):
    long_text = "word " * 9000  # past SmolLM2's 8192-token context, under the 0.1 MiB body limit
    answer = _grade(server, [{"instruction": "Summarise.", "response": long_text}, ITEMS[0]])
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["results"]
    assert first["status"] == "too_long" and first["score"] is None
    assert second["status"] == "ok" and second["score"] is not None


def _until(condition, timeout: float = 600, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


@pytest.mark.slow
def test_a_client_that_leaves_takes_its_rows_out_of_the_queue(server):
    before = _health(server)
    busy = []
    # a long first batch (32 CoTs a row), so the next request is still queued when its client leaves
    worker = threading.Thread(target=lambda: busy.append(_grade(server, ITEMS[:2], n_cot=32)))
    worker.start()
    _until(lambda: _health(server)["running_rows"] == 2, what="the first batch to start")
    with pytest.raises(httpx.ReadTimeout):
        _grade(server, ITEMS, timeout=1)  # queued behind the running batch, then abandoned
    _until(lambda: _health(server)["queued_rows"] == 0, timeout=10, what="the abandoned rows to leave the queue")
    worker.join()
    time.sleep(1)  # past the gather window: a left-over job would have started a batch by now
    after = _health(server)
    assert busy[0].status_code == 200
    assert after["rows_judged"] - before["rows_judged"] == 2 and after["batches"] - before["batches"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_shutdown_with_requests_in_flight_answers_them_and_exits(tmp_path, sig):
    port, log = free_port(), tmp_path / "server.log"
    proc = start_server(["--judge", "tract", "--max-new-tokens", "16", "--rubric", RUBRIC], port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        answers: list = []

        def in_flight():
            try:
                answers.append(httpx.post(f"{url}/v1/grade", json={"items": ITEMS}, timeout=120))
            except httpx.TransportError as exc:  # the connection closed: an error too, not a hang
                answers.append(exc)

        worker = threading.Thread(target=in_flight)
        worker.start()
        _until(lambda: _health(url)["running_rows"] == len(ITEMS), what="the batch to start")
        started = time.monotonic()
        code = stop(proc, sig, timeout=60)
        worker.join(timeout=60)
        assert not worker.is_alive() and time.monotonic() - started < 60
    finally:
        stop(proc, signal.SIGKILL)
    answer = answers[0]
    assert isinstance(answer, httpx.TransportError) or (answer.status_code == 503 and "shutting down" in answer.text)
    text = log.read_text()
    assert "Shutting down" in text
    assert code == 0 if sig == signal.SIGINT else code in (0, -signal.SIGTERM)
