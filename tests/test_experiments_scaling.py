"""Multi-CoT scaling: CoTs cached per seed, smaller K reuses them, larger K samples only the missing ones."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import stats

from tract_eval.records import Prediction

from tract_eval.experiments.scaling import CotCache, average_curve, curve, fill_cache, plot


@dataclass
class Sample:
    id: str
    gold: float
    meta: dict = field(default_factory=dict)


SAMPLES = [Sample(f"s{i}", g) for i, g in enumerate([1.0, 2.0, 2.5, 3.0, 4.0, 4.5, 5.0, 1.5])]


class CountingGenerator:
    """Deterministic per-CoT predictions: gold + noise from (sample, CoT index, seed) only."""

    def __init__(self, seed: int):
        self.seed, self.calls, self.cots = seed, [], 0

    def value(self, sample, index):
        rng = np.random.default_rng([self.seed, int(sample.id[1:]), index])
        return float(sample.gold + rng.normal(0, 1.0))

    def __call__(self, samples, n_cot, first_cot, on_row):
        self.calls.append((len(samples), n_cot, first_cot))
        for sample in samples:
            values = [self.value(sample, first_cot + i) for i in range(n_cot)]
            self.cots += n_cot
            on_row(Prediction(id=sample.id, gold=sample.gold, prediction=None, status="ok", per_cot=values,
                              cots=[f"cot {first_cot + i}" for i in range(n_cot)]))


def test_smaller_k_reuses_and_larger_k_adds_only_missing(tmp_path):
    gen = CountingGenerator(seed=1)
    cache = CotCache(tmp_path, "tract-abc", "vicuna", seed=1)
    assert fill_cache(cache, SAMPLES, 4, gen) == 32 and gen.calls == [(8, 4, 0)]
    assert fill_cache(cache, SAMPLES, 2, gen) == 0 and fill_cache(cache, SAMPLES, 4, gen) == 0
    assert gen.calls == [(8, 4, 0)]
    reopened = CotCache(tmp_path, "tract-abc", "vicuna", seed=1)  # a later process
    assert fill_cache(reopened, SAMPLES, 8, gen) == 32 and gen.calls[-1] == (8, 4, 4)
    assert [reopened.count(s.id) for s in SAMPLES] == [8] * 8
    # the same streams: CoTs 4..7 sampled later equal what one K=8 pass would have produced
    fresh_gen = CountingGenerator(seed=1)
    fresh = CotCache(tmp_path / "other", "tract-abc", "vicuna", seed=1)
    fill_cache(fresh, SAMPLES, 8, fresh_gen)
    assert fresh.per_cot == reopened.per_cot
    lines = [json.loads(line) for line in reopened.path.read_text().splitlines()]
    assert {line["first_cot"] for line in lines} == {0, 4} and lines[-1]["cots"][0] == "cot 4"


def test_uneven_cache_fills_each_sample_from_its_own_count(tmp_path):
    gen = CountingGenerator(seed=0)
    cache = CotCache(tmp_path, "j", "vicuna", seed=0)
    fill_cache(cache, SAMPLES[:3], 2, gen)
    fill_cache(cache, SAMPLES, 3, gen)
    assert sorted(gen.calls) == sorted([(3, 2, 0), (3, 1, 2), (5, 3, 0)])


def test_truncated_last_line_is_dropped_and_appends_stay_valid(tmp_path):
    gen = CountingGenerator(seed=0)
    cache = CotCache(tmp_path, "j", "vicuna", seed=0)
    fill_cache(cache, SAMPLES[:2], 1, gen)
    with open(cache.path, "a") as fh:
        fh.write('{"id": "s2", "gold": 2.5, "first_')  # killed mid-write
    again = CotCache(tmp_path, "j", "vicuna", seed=0)
    assert again.count("s2") == 0 and again.count("s1") == 1
    fill_cache(again, SAMPLES[:3], 1, gen)
    assert CotCache(tmp_path, "j", "vicuna", seed=0).count("s2") == 1


def test_curve_averages_first_k_and_spreads_over_seeds(tmp_path):
    caches = []
    for seed in (0, 1, 2):
        cache = CotCache(tmp_path, "j", "vicuna", seed=seed)
        fill_cache(cache, SAMPLES, 4, CountingGenerator(seed))
        caches.append(cache)
    ids = [s.id for s in SAMPLES]
    points = curve("j", "vicuna", caches, ids, [1, 2, 4])
    gold = [s.gold for s in SAMPLES]
    expected = [stats.pearsonr(gold, [np.mean(c.per_cot[i][:2]) for i in ids])[0] for c in caches]
    two = points[1]
    assert two.k == 2 and two.per_seed == pytest.approx(expected)
    assert two.mean_r == pytest.approx(np.mean(expected)) and two.std_r == pytest.approx(np.std(expected))
    assert two.n == 8 and two.seeds == 3
    both = points + [p.__class__(**{**p.__dict__, "bench": "mt-bench"}) for p in points]
    average = average_curve(both, ["vicuna", "mt-bench"])
    assert [p.k for p in average] == [1, 2, 4] and average[1].mean_r == pytest.approx(two.mean_r)
    paths = plot(points + average, tmp_path / "fig" / "scaling")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    undefined = [p.__class__(**{**p.__dict__, "bench": "flask", "mean_r": float("nan"), "std_r": float("nan")})
                 for p in points]
    assert plot(undefined + points, tmp_path / "fig" / "partly-undefined")[0].stat().st_size > 1000


def test_cache_key_ignores_k_and_seed_but_not_sampling_settings():
    from tract_eval.experiments.scaling import cache_key
    from tract_eval.judges import JudgeOverrides, build_judge

    base = build_judge("tract", JudgeOverrides(max_new_tokens=32, backend=None, model=None))
    other_k = build_judge("tract", JudgeOverrides(max_new_tokens=32, n_cot=8, seed=5))
    assert cache_key(base.config) == cache_key(other_k.config)
    assert cache_key(base.config) != cache_key(build_judge("tract", JudgeOverrides(max_new_tokens=64)).config)
    assert cache_key(base.config) != cache_key(build_judge("tract", JudgeOverrides(temperature=0.7)).config)
    named = build_judge("tract", JudgeOverrides(backend="transformers"))  # a backend name, not a Backend object
    assert named.config.backend == "transformers" and named._backend is None


def test_a_cache_file_of_other_lines_is_refused_naming_the_entry(tmp_path):
    from tract_eval.experiments.scaling import CotCache

    path = tmp_path / "cot-cache" / "k" / "vicuna" / "seed-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "a", "gold": 3, "first_cot": 0, "per_cot": [2.5]}\n{"id": "b", "gold": 3}\n')
    with pytest.raises(ValueError, match=r"seed-0.jsonl: entry 2 is not a cache entry \(an object with first_cot"):
        CotCache(tmp_path, "k", "vicuna", 0)
