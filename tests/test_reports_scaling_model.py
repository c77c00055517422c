"""Scaling on the embedded model and real Vicuna rows: larger K samples only the missing CoTs, and a
fully cached request loads no model at all."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("TRACT_EVAL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA_DIR / "prometheus" / "vicuna_eval.json").is_file(),
                                reason=f"shared data not found under {DATA_DIR}")
OVERRIDES = {"max_new_tokens": 6, "batch_size": 4}


@pytest.fixture(scope="module")
def embedded_backend():
    from tract_eval.backends import create_backend

    return create_backend("transformers", None, device="cpu")


class Forbidden:
    """Stands in for a backend where none may be used."""

    name = "forbidden"

    def __getattr__(self, item):
        raise AssertionError(f"the model was used ({item}) although every CoT was cached")


@pytest.mark.slow
@needs_data
def test_larger_k_samples_only_missing_and_cached_k_loads_nothing(tmp_path, embedded_backend, monkeypatch):
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.cli import main
    from tract_eval.reports.scaling import CotCache, cache_key, run_scaling
    from tract_eval.judges import build_judge

    bench = load_benchmark("vicuna", DATA_DIR)
    log: list[str] = []
    run = lambda ks, backend: run_scaling(["tract"], [bench], ks, [0], OVERRIDES, tmp_path, limit=2,  # noqa: E731
                                          log_line=log.append, backend=backend)
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

    # the CLI on the same cache: no model constructed
    def no_model(*args, **kwargs):
        raise AssertionError("TransformersBackend constructed although every CoT was cached")

    monkeypatch.setattr("tract_eval.backends.transformers_backend.TransformersBackend.__init__", no_model)
    out = tmp_path / "report"
    assert main(["scaling", "--judge", "tract", "--bench", "vicuna", "--limit", "2", "--n-cot", "1,2",
                 "--seeds", "1", "--max-new-tokens", "6", "--batch-size", "4", "--cache", str(tmp_path),
                 "--out", str(out), "--data-dir", str(DATA_DIR)]) == 0
    assert {p.name for p in out.iterdir()} >= {"scaling.md", "scaling.csv", "scaling.json", "scaling.png", "scaling.svg"}
