"""Resume, interruption and config-conflict behaviour of the runner."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tract_eval.backends import Backend, Completion
from tract_eval.benchmarks import load_benchmark
from tract_eval.judges import build_judge
from tract_eval.records import read_predictions
from tract_eval.runner import RunConflict, merge_shards, run_benchmark


class LengthBackend(Backend):
    """A deterministic in-process backend: prefers scores near len(response) mod 5. Crashes on demand."""

    name = "length"

    def __init__(self, crash_after: int | None = None):
        words = "So the overall score is".split() + [str(i) for i in range(1, 6)]
        vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        self._tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
        self.crash_after = crash_after
        self.judged = 0

    def tokenizer(self):
        return self._tok

    def render_chat(self, messages, response_prefix=""):
        return "\n".join(m["content"] for m in messages) + "\nASSISTANT:" + response_prefix

    def _completion(self, prompt, index):
        if self.crash_after is not None and self.judged >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.judged += 1
        target = 1 + (len(prompt) + index) % 5
        logprobs = {s: -abs(s - target) - 1.0 for s in range(1, 6)}
        return Completion(f"cot {index} So the overall score is ", "delimiter", 5, candidate_logprobs=logprobs)

    def generate(self, requests, sampling, on_done=None, batch_size=None):
        out = []
        for i, r in enumerate(requests):
            out.append([self._completion(r.prompt, r.first_index + k) for k in range(r.n)])
            if on_done:
                on_done(i, out[-1])
        return out

    def score(self, requests):
        return [self._completion(r.prompt, 0) for r in requests]


@pytest.fixture()
def vicuna(data_dir):
    return load_benchmark("vicuna", data_dir)


def test_interrupted_run_resumes_without_duplicates(tmp_path, vicuna):
    crashing = build_judge("tract", backend=LengthBackend(crash_after=5), batch_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark(crashing, vicuna, tmp_path, limit=10)
    path = tmp_path / "tract" / "vicuna" / "predictions.jsonl"
    assert len(read_predictions(path)) == 5  # every finished sample was kept

    backend = LengthBackend()
    result = run_benchmark(build_judge("tract", backend=backend, batch_size=2), vicuna, tmp_path, limit=10)
    assert backend.judged == 5 and (result.new_samples, result.reused_samples) == (5, 5)
    ids = [r.id for r in read_predictions(path)]
    assert ids == [s.id for s in vicuna.samples[:10]] and len(set(ids)) == 10
    metrics = json.loads((tmp_path / "tract" / "vicuna" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["pearson"] is not None
    assert metrics["generation"]["cots"] == 10 and metrics["generation"]["finish_reasons"] == {"delimiter": 10}
    assert 0 < metrics["generation"]["mean_candidate_mass"] < 1

    # raising --limit reuses the finished samples
    backend = LengthBackend()
    result = run_benchmark(build_judge("tract", backend=backend), vicuna, tmp_path, limit=12)
    assert backend.judged == 2 and result.reused_samples == 10


def test_torn_last_line_is_dropped_and_a_corrupt_middle_line_is_named(tmp_path, vicuna):
    run_benchmark(build_judge("tract", backend=LengthBackend()), vicuna, tmp_path, limit=3)
    path = tmp_path / "tract" / "vicuna" / "predictions.jsonl"
    with open(path, "a") as fh:
        fh.write('{"id": "half a li')  # what a SIGKILL mid-write leaves
    backend = LengthBackend()
    run_benchmark(build_judge("tract", backend=backend), vicuna, tmp_path, limit=3)
    assert backend.judged == 0 and len(read_predictions(path)) == 3
    assert path.read_text().endswith("}\n")

    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        run_benchmark(build_judge("tract", backend=LengthBackend()), vicuna, tmp_path, limit=3)


def test_other_config_or_seed_is_refused(tmp_path, vicuna):
    run_benchmark(build_judge("tract", backend=LengthBackend()), vicuna, tmp_path, limit=2)
    with pytest.raises(RunConflict, match="seed"):
        run_benchmark(build_judge("tract", backend=LengthBackend(), seed=1), vicuna, tmp_path, limit=2)
    with pytest.raises(RunConflict, match="n_cot"):
        run_benchmark(build_judge("tract", backend=LengthBackend(), n_cot=2), vicuna, tmp_path, limit=2)
    # batch size, device, or naming the card's model explicitly do not change predictions: allowed
    run_benchmark(build_judge("tract", backend=LengthBackend(), model=None), vicuna, tmp_path, limit=2)
    run_benchmark(build_judge("tract", backend=LengthBackend(), batch_size=3), vicuna, tmp_path, limit=2)


def test_rows_carry_distributions_and_per_cot_predictions(tmp_path, vicuna):
    result = run_benchmark(build_judge("tract", backend=LengthBackend(), n_cot=3), vicuna, tmp_path, limit=2)
    row = read_predictions(result.out_dir / "predictions.jsonl")[0]
    assert len(row.cots) == len(row.score_probs) == len(row.per_cot) == 3
    assert sum(row.score_probs[0].values()) == pytest.approx(1.0)
    assert row.candidate_mass[0] == pytest.approx(sum(row.raw_probs[0].values()))
    assert max(row.raw_probs[0].values()) == pytest.approx(math.exp(-1.0))
    assert row.prediction == pytest.approx(sum(row.per_cot) / 3)
    expected = sum(int(s) * p for s, p in row.raw_probs[1].items())  # raw, as the reference
    assert row.per_cot[1] == pytest.approx(expected)
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["judge"]["n_cot"] == 3 and manifest["seed"] == 0
    assert "transformers" in manifest["sessions"][-1]["versions"]
    assert manifest["candidates"]["delimiter"] == "So the overall score is"


def test_raw_probabilities_option_is_the_unnormalised_expectation(tmp_path, vicuna):
    result = run_benchmark(build_judge("tract", backend=LengthBackend(), renormalize=False), vicuna, tmp_path, limit=1)
    row = read_predictions(result.out_dir / "predictions.jsonl")[0]
    assert row.per_cot[0] == pytest.approx(sum(int(s) * p for s, p in row.raw_probs[0].items()))


def test_shards_are_disjoint_and_merge_into_one_run(tmp_path, data_dir):
    bench = load_benchmark("rewardbench", data_dir)
    for i in range(3):
        run_benchmark(build_judge("tract", backend=LengthBackend()), bench, tmp_path, limit=7, shard=(i, 3))
    shard_ids = [{r.id for r in read_predictions(p)} for p in sorted(tmp_path.glob("tract/rewardbench/shards/*/predictions.jsonl"))]
    assert sum(len(s) for s in shard_ids) == 14 and not (shard_ids[0] & shard_ids[1])
    metrics = merge_shards(tmp_path / "tract" / "rewardbench", bench)
    assert metrics["n_pairs"] == 7
    whole = run_benchmark(build_judge("tract", backend=LengthBackend()), bench, tmp_path / "whole", limit=7)
    assert whole.metrics["score"] == metrics["score"]


def test_parse_failures_follow_the_stated_policy(tmp_path, vicuna):
    class Silent(LengthBackend):
        def _completion(self, prompt, index):
            return Completion("I cannot decide.", "eos", 4)

    excluded = run_benchmark(build_judge("ce-decode-cot", backend=Silent()), vicuna, tmp_path / "a", limit=3)
    assert excluded.metrics["parse_failures"] == 3 and excluded.metrics["n"] == 0
    fallback = run_benchmark(build_judge("ce-decode-cot", backend=Silent(), parse_failure_policy="fallback",
                                         fallback_score=3.0), vicuna, tmp_path / "b", limit=3)
    rows = read_predictions(fallback.out_dir / "predictions.jsonl")
    assert [r.status for r in rows] == ["fallback"] * 3 and rows[0].prediction == 3.0
    assert fallback.metrics["fallbacks"] == 3


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_nothing(tmp_path, data_dir):
    """A real run on the embedded model, killed with SIGKILL once samples are on disk, then resumed."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "tract_eval.cli", "run", "--judge", "rail", "--bench", "vicuna",
           "--limit", "6", "--batch-size", "1", "--out", str(out), "--data-dir", str(data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "rail" / "vicuna" / "predictions.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_predictions(path))
    assert 2 <= done_before < 6, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    rows = read_predictions(path)
    expected = [s.id for s in load_benchmark("vicuna", data_dir).samples[:6]]
    assert sorted(r.id for r in rows) == sorted(expected)  # each sample exactly once
    manifest = json.loads((out / "rail" / "vicuna" / "manifest.json").read_text())
    assert manifest["sessions"][-1]["new_samples"] == 6 - done_before


def test_one_loop_batches_sequences_and_skips_done(vicuna):
    class Recording(LengthBackend):
        batches: list = []

        def generate(self, requests, sampling, on_done=None, batch_size=None):
            self.batches.append(([(r.key, r.n, r.first_index) for r in requests], batch_size))
            return super().generate(requests, sampling, on_done)

    from tract_eval.runner import judge_pending

    backend, rows = Recording(), []
    samples = vicuna.select(5)
    judged = judge_pending(build_judge("tract", backend=backend, n_cot=2), samples, rows.append, batch_size=4,
                           done={samples[0].id}, first_cot=3)
    assert judged == 4 and [r.id for r in rows] == [s.id for s in samples[1:]]
    # the whole queue in one call, 4 sequences decoding at once (the backend refills finished slots);
    # CoTs 3 and 4 of each
    [(requests, size)] = backend.batches
    assert len(requests) == 4 and size == 4 and requests[0][1:] == (2, 3)


def test_scaling_cache_fills_through_the_runner_loop(tmp_path, vicuna):
    from tract_eval.experiments.scaling import run_scaling
    from tract_eval.judges import JudgeOverrides

    backend = LengthBackend()
    points = run_scaling(["tract"], [vicuna], [1, 2], [0], JudgeOverrides(), tmp_path, limit=3,
                         log_line=lambda _: None, backend=backend)
    assert backend.judged == 6 and [p.k for p in points] == [1, 2]
    again = LengthBackend()
    run_scaling(["tract"], [vicuna], [1, 2], [0], JudgeOverrides(), tmp_path, limit=3, log_line=lambda _: None,
                backend=again)
    assert again.judged == 0


def test_protocols_without_streaming_save_each_batch_before_the_next(vicuna):
    """Score-only and decode protocols finish rows only when a backend call ends; the judge hands them
    a batch of samples at a time, so a crash keeps every batch finished before it."""
    from tract_eval.runner import judge_pending

    backend, rows = LengthBackend(crash_after=3), []
    judge = build_judge("rail", backend=backend)  # score-only RAIL: one score() call per batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        judge_pending(judge, vicuna.select(6), rows.append, batch_size=2)
    assert [r.id for r in rows] == [s.id for s in vicuna.select(2)]  # the first batch was saved
