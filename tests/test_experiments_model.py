"""On the embedded model and real Vicuna rows (one model load for the module): scaling samples only the
missing CoTs and loads no model when all are cached; cot-shift and CoT perplexity."""
from __future__ import annotations

import pytest

OVERRIDES = {"max_new_tokens": 6, "batch_size": 4}


class Forbidden:
    """Stands in for a backend where none may be used."""

    name = "forbidden"

    def __getattr__(self, item):
        raise AssertionError(f"the model was used ({item}) although every CoT was cached")


@pytest.mark.slow
def test_larger_k_samples_only_missing_and_cached_k_loads_nothing(tmp_path, embedded_backend, data_dir,
                                                                   monkeypatch):
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.cli import main
    from tract_eval.judges import Judge, JudgeOverrides, build_judge
    from tract_eval.experiments.scaling import CotCache, cache_key, run_scaling

    bench = load_benchmark("vicuna", data_dir)
    log: list[str] = []
    run = lambda ks, backend: run_scaling(["tract"], [bench], ks, [0], JudgeOverrides(**OVERRIDES),  # noqa: E731
                                          tmp_path, limit=2, log_line=log.append, backend=backend)
    run([1], embedded_backend)
    assert "sampled 2 new CoTs" in log[-1]
    cache = CotCache(tmp_path, cache_key(build_judge("tract", **OVERRIDES).config), "vicuna", 0)
    first = {sid: list(values) for sid, values in cache.per_cot.items()}
    points = run([1, 2], embedded_backend)
    assert "sampled 2 new CoTs" in log[-1]  # one more per sample, not two
    cache = CotCache(tmp_path, cache_key(build_judge("tract", **OVERRIDES).config), "vicuna", 0)
    assert all(cache.per_cot[sid][:1] == first[sid] and len(cache.per_cot[sid]) == 2 for sid in first)
    assert [p.k for p in points] == [1, 2] and points[0].n == 2
    run([1, 2], Forbidden())
    assert "all 2 CoTs per sample cached" in log[-1]

    # the CLI on the same cache: no judge reaches for its backend, no model is constructed
    def no_model(*args, **kwargs):
        raise AssertionError("a model was asked for although every CoT was cached")

    monkeypatch.setattr(Judge, "backend", property(no_model))
    monkeypatch.setattr("tract_eval.backends.transformers_backend.TransformersBackend.__init__", no_model)
    out = tmp_path / "report"
    assert main(["scaling", "--judge", "tract", "--bench", "vicuna", "--limit", "2", "--n-cot", "1,2",
                 "--seeds", "1", "--max-new-tokens", "6", "--batch-size", "4", "--cache", str(tmp_path),
                 "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert {p.name for p in out.iterdir()} >= {"scaling.md", "scaling.csv", "scaling.json", "scaling.png", "scaling.svg"}


@pytest.mark.slow
def test_perplexity_matches_the_models_own_loss(embedded_backend):
    import math

    import torch

    from tract_eval.experiments.analysis import continuation_nll, perplexity

    prompt = embedded_backend.render_chat([{"role": "user", "content": "Grade this answer from 1 to 5."}])
    cot = "The answer is correct and clear. So the overall score is"
    nll, tokens = continuation_nll(embedded_backend, prompt, cot)
    prompt_ids, cot_ids = embedded_backend.encode(prompt), embedded_backend.encode(cot)
    ids = torch.tensor([prompt_ids + cot_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + cot_ids])
    with torch.inference_mode():
        loss = float(embedded_backend.model(input_ids=ids, labels=labels).loss)  # HF's own shifted mean NLL
    assert tokens == len(cot_ids) and nll / tokens == pytest.approx(loss, abs=1e-4)
    gibberish = "zebra quantum teapot seventeen marmalade. So the overall score is"
    result = perplexity(embedded_backend, [(prompt, cot), (prompt, gibberish)])
    assert result.texts == 2 and result.perplexity == pytest.approx(
        math.exp((nll + continuation_nll(embedded_backend, prompt, gibberish)[0]) / result.tokens))
    assert continuation_nll(embedded_backend, prompt, gibberish)[0] / continuation_nll(
        embedded_backend, prompt, gibberish)[1] > nll / tokens


@pytest.mark.slow
def test_cot_shift_on_annotation_cots(embedded_backend, data_dir):
    import numpy as np

    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge
    from tract_eval.experiments.analysis import ANNOTATION_SUFFIX, annotation_cots, cot_shift

    bench = load_benchmark("vicuna", data_dir)
    samples = bench.select(2)
    annotations = annotation_cots(bench)
    assert len(annotations) == 3 * len(bench.samples)
    judge = build_judge("tract", backend=embedded_backend, **OVERRIDES)
    summary, rows = cot_shift(judge, samples, annotations)
    assert summary.rows == 6 and len(rows) == 6 and summary.samples == 2
    given = np.array([r["given_cot_prediction"] for r in rows])
    own = np.array([r["own_cot_prediction"] for r in rows])
    gold = np.array([r["gold"] for r in rows])
    assert summary.rmse_given == pytest.approx(np.sqrt(np.mean((given - gold) ** 2)))
    assert summary.rmse_own == pytest.approx(np.sqrt(np.mean((own - gold) ** 2)))
    assert ((given >= 1) & (given <= 5)).all()
    # the given-CoT score is the RAIL read after exactly that text
    direct = judge.score_given_cots(samples[:1], [[annotations[0].cot + ANNOTATION_SUFFIX]])[0]
    assert direct.per_cot[0] == pytest.approx(rows[0]["given_cot_prediction"], abs=1e-6)
    assert direct.forced == [""]  # the suffix is the delimiter: nothing had to be forced
