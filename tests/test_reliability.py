"""Reliability: runs killed at random points, concurrent runs, and property fuzzing of the readers.

Kills use ``os.fork`` + SIGKILL of a child running the real runner on a cheap deterministic backend,
so many trials fit in seconds; each trial's rerun must end with exactly the predictions and metrics
of an uninterrupted run. The counts are printed (``-s``) for the issue's closing note.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_runner import LengthBackend
from tract_eval.benchmarks import DataFormatError, load_benchmark
from tract_eval.judges import build_judge
from tract_eval.parsing import parse_score
from tract_eval.records import CorruptPredictions, Prediction, RunLocked, read_jsonl, read_predictions
from tract_eval.runner import RunConflict, run_benchmark

pytestmark = [pytest.mark.reliability, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

TRIALS = 24
LIMIT = 16
TIMING_FIELDS = ("seconds",)


class SlowLengthBackend(LengthBackend):
    """LengthBackend that takes a few milliseconds per CoT, so a kill lands mid-run."""

    def _completion(self, prompt, index):
        time.sleep(0.004)
        return super()._completion(prompt, index)


def judged(out, bench, seed=0):
    judge = build_judge("tract", backend=SlowLengthBackend(), n_cot=2, batch_size=4, seed=seed)
    return run_benchmark(judge, bench, out, limit=LIMIT)


def in_child(fn) -> int:
    """Run ``fn`` in a forked child; returns its pid (exit status 0 = done, 2 = run refused, 1 = other error)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            fn()
            status = 0
        except (RunLocked, RunConflict):
            status = 2
        finally:
            os._exit(status)
    return pid


def wait(pid) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def snapshot(folder):
    rows = read_predictions(folder / "predictions.jsonl")
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids)), "a sample was written twice"
    stripped = {r.id: {k: v for k, v in r.to_dict().items() if k not in TIMING_FIELDS} for r in rows}
    return stripped, json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def vicuna(data_dir):
    return load_benchmark("vicuna", data_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vicuna):
    out = tmp_path_factory.mktemp("reference")
    judged(out, vicuna)
    return snapshot(out / "tract" / "vicuna")


@pytest.mark.slow  # seconds, not minutes, but more than a unit test
def test_sigkill_at_random_points_loses_nothing(tmp_path, vicuna, reference):
    rng = random.Random(11)
    uninterrupted = 0.004 * 2 * LIMIT
    kills = mid_run = 0
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}"
        for _ in range(rng.choice([1, 2])):  # some trials are killed twice before they finish
            pid = in_child(lambda: judged(out, vicuna))
            time.sleep(rng.uniform(0, 2.5 * uninterrupted))
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            code = wait(pid)
            assert code in (0, -signal.SIGKILL), f"trial {trial}: child ended with {code}"
            done = len(read_jsonl(out / "tract" / "vicuna" / "predictions.jsonl"))
            mid_run += 0 < done < LIMIT
        judged(out, vicuna)  # the rerun
        assert snapshot(out / "tract" / "vicuna") == reference, f"trial {trial} differs from the uninterrupted run"
    print(f"\nSIGKILL trials: {TRIALS}, kills: {kills}, landed mid-run: {mid_run}, rows lost: 0")
    assert kills >= TRIALS and mid_run >= TRIALS // 3


@pytest.mark.slow  # seconds, not minutes, but more than a unit test
def test_a_second_run_into_a_busy_folder_is_refused_and_nothing_is_written_twice(tmp_path, vicuna, reference):
    first = in_child(lambda: judged(tmp_path, vicuna))
    lock = tmp_path / "tract" / "vicuna" / ".lock"
    deadline = time.monotonic() + 30
    while not (lock.is_file() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
        time.sleep(0.002)
    second = in_child(lambda: judged(tmp_path, vicuna))  # same command
    other_seed = in_child(lambda: judged(tmp_path, vicuna, seed=1))
    assert wait(second) == 2 and wait(other_seed) == 2
    assert wait(first) == 0
    assert snapshot(tmp_path / "tract" / "vicuna") == reference
    # once the folder is free, another seed is refused by the run identity, not mixed in
    with pytest.raises(RunConflict, match=r"judge\.seed: 0 -> 1"):
        judged(tmp_path, vicuna, seed=1)


@pytest.mark.slow  # seconds, not minutes, but more than a unit test
def test_many_concurrent_runs_write_each_row_once(tmp_path, vicuna, reference):
    pids = [in_child(lambda: judged(tmp_path, vicuna)) for _ in range(6)]
    codes = [wait(pid) for pid in pids]
    assert codes.count(0) >= 1 and set(codes) <= {0, 2}
    judged(tmp_path, vicuna)  # whoever lost the race: one more run completes the folder
    assert snapshot(tmp_path / "tract" / "vicuna") == reference


# -- property fuzzing ------------------------------------------------------------------------------
MARKERS = st.sampled_from(["[RESULT]", "So the overall score is", "Score:", "overall score is", "", " ", "\n"])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=12), MARKERS, st.integers(-20, 120).map(str)), max_size=12),
       st.tuples(st.integers(0, 10), st.integers(0, 10)).filter(lambda s: s[0] < s[1]))
def test_parse_score_returns_none_or_a_score_inside_the_scale(parts, scale):
    value = parse_score("".join(parts), scale)
    assert value is None or (isinstance(value, int) and scale[0] <= value <= scale[1])


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 100), st.floats(allow_nan=True),
                         st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
PROMETHEUS_KEYS = ["instruction", "orig_instruction", "orig_response", "orig_criteria", "orig_reference_answer",
                   "gpt4_score", "orig_score", "idx", "response_source"] + [f"orig_score{i}_description" for i in range(1, 6)]


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(PROMETHEUS_KEYS), JSON_VALUES, max_size=14), max_size=4),
       raw=st.one_of(st.none(), st.binary(max_size=60)))
def test_loaders_raise_only_their_documented_errors(tmp_path_factory, rows, raw):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "prometheus").mkdir()
    path = folder / "prometheus" / "vicuna_eval.json"
    path.write_bytes(raw if raw is not None else json.dumps(rows).encode())
    try:
        bench = load_benchmark("vicuna", folder)
    except DataFormatError:
        return
    for sample in bench.samples:  # what loads is usable: numeric gold, text fields
        assert isinstance(sample.gold, float) and isinstance(sample.fields.instruction, str)


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=30), st.builds(
    lambda i, p: json.dumps({"id": str(i), "gold": 1.0, "prediction": p, "status": "ok"}).encode(),
    st.integers(0, 99), st.floats(1, 5))), max_size=6), torn=st.booleans())
def test_the_predictions_reader_raises_only_corrupt_predictions(tmp_path_factory, lines, torn):
    path = tmp_path_factory.mktemp("rows") / "predictions.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"" if torn else b"\n"))
    try:
        rows = read_jsonl(path, repair=True)
    except CorruptPredictions:
        return
    assert all(isinstance(r, (dict, list, str, int, float, bool, type(None))) for r in rows)
    assert read_jsonl(path) == rows  # repair left a file that reads the same, without a torn tail


@FUZZ
@given(st.builds(Prediction, id=st.text(max_size=10), gold=st.none() | st.floats(1, 5),
                 prediction=st.none() | st.floats(1, 5), status=st.sampled_from(["ok", "parse_failure", "too_long"]),
                 per_cot=st.lists(st.none() | st.floats(1, 5), max_size=3), errors=st.lists(st.text(max_size=20), max_size=2)))
def test_prediction_rows_round_trip(row):
    assert Prediction.from_dict(json.loads(json.dumps(row.to_dict()))) == row
