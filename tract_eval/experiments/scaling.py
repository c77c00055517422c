"""The paper's Figure 3: average Pearson r against the number of CoTs K, ± one std over seeds.

Per judge, benchmark and seed the largest K CoTs are sampled once and every smaller K averages the
first K of them. CoTs are cached on disk (one JSONL per judge fingerprint, benchmark and seed): CoT i
uses random stream ``i``, so asking for K=16 after K=8 only samples CoTs 8..15, and when nothing is
missing no judge (and so no model) is built at all.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..judge_config import JudgeOverrides
from ..records import Prediction, read_jsonl
from ..store import RunStore

CACHE_DIR = "cot-cache"
CACHE_ENTRY_FIELDS = frozenset({"id", "gold", "first_cot", "per_cot"})


def cache_key(config) -> str:
    """The judge's identity (settings and model) with ``n_cot`` and ``seed`` neutralised: those vary
    inside one cache."""
    import hashlib

    from ..identity import judge_identity

    neutral = judge_identity(config.with_overrides(n_cot=1, seed=0))
    return f"{config.name}-{hashlib.sha256(json.dumps(neutral, sort_keys=True).encode()).hexdigest()[:16]}"


class CotCache:
    """Per-CoT predictions (and texts) of one judge on one benchmark under one seed.

    Lines are appended as samples finish, so a killed run keeps what it finished; each line holds
    a sample's CoTs ``first_cot .. first_cot + len(per_cot) - 1``. Opening reads what is there (a
    torn last line skipped); :func:`fill_cache` writes under the file's lock.
    """

    def __init__(self, root: Path, key: str, bench: str, seed: int):
        self.path = Path(root) / CACHE_DIR / key / bench / f"seed-{seed}.jsonl"
        self.gold: dict[str, float | None] = {}
        self.store = RunStore.file(self.path, "--cache", read=self._entries, fold=self._merge)
        self.store.load()  # no lock taken: a torn line is skipped, cut off only by the next fill

    @property
    def per_cot(self) -> dict[str, list]:
        return self.store.rows

    def _entries(self, path: Path, repair: bool) -> list[dict]:
        entries = read_jsonl(path, repair)
        for number, entry in enumerate(entries, start=1):
            if not (isinstance(entry, dict) and CACHE_ENTRY_FIELDS <= entry.keys()
                    and isinstance(entry["first_cot"], int) and isinstance(entry["per_cot"], list)):
                raise ValueError(f"{path}: entry {number} is not a cache entry (an object with "
                                 f"{', '.join(sorted(CACHE_ENTRY_FIELDS))}; first_cot a number, per_cot a list)")
        return entries

    def _merge(self, per_cot: dict, entry: dict) -> None:
        sample_id, first_cot, values = entry["id"], entry["first_cot"], entry["per_cot"]
        have = per_cot.setdefault(sample_id, [])
        if first_cot > len(have):
            raise ValueError(f"{self.path}: sample {sample_id!r} has CoTs from {first_cot} but only {len(have)} before")
        have[first_cot:first_cot + len(values)] = values
        self.gold[sample_id] = entry["gold"]

    def count(self, sample_id: str) -> int:
        return len(self.per_cot.get(sample_id, []))

    def append(self, sample_id: str, gold, first_cot: int, row: Prediction) -> None:
        """One entry, through the store's one appender of this fill (fsynced, like every run file)."""
        self.store.append({"id": sample_id, "gold": gold, "first_cot": first_cot, "per_cot": list(row.per_cot),
                           "cots": row.cots, "status": row.status})


# (samples, n_cot, first_cot, on_row(row)) -> None; builds the judge (and model) only when called
Generate = Callable[[list, int, int, Callable[[dict], None]], None]


def fill_cache(cache: CotCache, samples: list, k: int, generate: Generate) -> int:
    """Make sure every sample has ``k`` CoTs; returns how many new CoTs were sampled. A fill locks the
    cache file, reads it again (a torn last line cut off) and writes through one appender; a cache that
    already holds them all is only read."""
    if not _short_of(cache, samples, k):
        return 0
    added = 0
    with cache.store:
        for have, group in sorted(_short_of(cache, samples, k).items()):
            def on_row(row, first_cot=have):
                cache.append(row.id, row.gold, first_cot, row)
            generate(group, k - have, have, on_row)
            added += (k - have) * len(group)
    return added


def _short_of(cache: CotCache, samples: list, k: int) -> dict[int, list]:
    """The samples with fewer than ``k`` CoTs, by how many they have."""
    by_have: dict[int, list] = {}
    for sample in samples:
        have = cache.count(sample.id)
        if have < k:
            by_have.setdefault(have, []).append(sample)
    return by_have


def mean_prediction(values: list, k: int) -> float | None:
    """Mean of the first ``k`` per-CoT predictions, skipping unparsed ones (decode judges)."""
    usable = [v for v in values[:k] if v is not None]
    return sum(usable) / len(usable) if usable else None


@dataclass
class CurvePoint:
    judge: str
    bench: str
    k: int
    mean_r: float
    std_r: float  # over seeds (population std; 0 with one seed)
    seeds: int
    n: int  # samples with a prediction at this K (min over seeds)
    per_seed: list[float]


def curve(judge: str, bench: str, caches: list[CotCache], ids: list[str], ks: list[int]) -> list[CurvePoint]:
    import numpy as np

    from ..reports.stats import absolute_measure

    points = []
    for k in ks:
        values, counts = [], []
        for cache in caches:
            pairs = [(cache.gold[i], mean_prediction(cache.per_cot[i], k)) for i in ids]
            pairs = [(g, p) for g, p in pairs if g is not None and p is not None]
            counts.append(len(pairs))
            values.append(absolute_measure("r", np.array([g for g, _ in pairs]), np.array([p for _, p in pairs])))
        finite = [v for v in values if math.isfinite(v)]
        points.append(CurvePoint(judge, bench, k, float(np.mean(finite)) if finite else math.nan,
                                 float(np.std(finite)) if finite else math.nan, len(caches), min(counts), values))
    return points


def average_curve(points: list[CurvePoint], benches: list[str]) -> list[CurvePoint]:
    """Per judge and K, the Average over benchmarks of each seed's r (then mean/std over seeds)."""
    import numpy as np

    out = []
    for judge in sorted({p.judge for p in points}):
        for k in sorted({p.k for p in points}):
            group = [p for p in points if p.judge == judge and p.k == k and p.bench in benches]
            if len(group) != len(benches):
                continue
            per_seed = np.mean([p.per_seed for p in group], axis=0)
            out.append(CurvePoint(judge, "Average", k, float(np.nanmean(per_seed)), float(np.nanstd(per_seed)),
                                  group[0].seeds, sum(p.n for p in group), per_seed.tolist()))
    return out


def plot(points: list[CurvePoint], out_stem: Path, title: str = "") -> list[Path]:
    """One panel per benchmark (and the Average), a line per judge with a ± 1 std band; PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..reports.table import bench_title

    benches = list(dict.fromkeys(p.bench for p in points))
    fig, axes = plt.subplots(1, len(benches), figsize=(4.2 * len(benches), 3.6), squeeze=False, sharey=False)
    for ax, bench in zip(axes[0], benches):
        for judge in dict.fromkeys(p.judge for p in points):
            # an undefined r (e.g. constant gold on a tiny --limit) has no point to draw
            line = sorted((p for p in points if p.bench == bench and p.judge == judge and math.isfinite(p.mean_r)),
                          key=lambda p: p.k)
            if not line:
                continue
            ks = [p.k for p in line]
            mean = [p.mean_r for p in line]
            std = [p.std_r for p in line]
            ax.plot(ks, mean, marker="o", label=judge)
            ax.fill_between(ks, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        all_k = sorted({p.k for p in points})
        ax.set_xscale("log", base=2)
        ax.set_xlim(all_k[0] / 1.25, all_k[-1] * 1.25)
        ax.set_xticks(all_k)
        if not ax.lines:
            ax.text(0.5, 0.5, "r undefined", ha="center", va="center", transform=ax.transAxes)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(bench_title(bench))
        ax.set_xlabel("CoTs per sample (K)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Pearson r (mean ± std over seeds)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize="small")
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=55 * len(benches)), fontsize="small")
    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for path in paths:
        # fixed metadata keeps the committed SVG stable across reruns
        fig.savefig(path, dpi=150, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def points_table(points: list[CurvePoint]) -> list[dict]:
    return [{"judge": p.judge, "bench": p.bench, "k": p.k, "mean_r": p.mean_r, "std_r": p.std_r, "seeds": p.seeds,
             "n": p.n, "per_seed_r": p.per_seed} for p in points]


def judge_generator(judge_name: str, overrides: JudgeOverrides, seed: int, shared) -> Generate:
    """Sample CoTs with the named judge under ``seed``; ``shared`` holds the one backend (created on first use)."""

    def generate(samples, n_cot, first_cot, on_row):
        if "backend" not in shared:
            base = shared["judge"]
            shared["backend"] = base.backend  # the model loads here, and only here
            if base.model_note:  # the card's model was swapped: the cache key would lie
                raise ConfigError(f"judge {judge_name}: {base.model_note}; pass --model explicitly so the "
                                   "CoT cache is keyed on the model that really writes the CoTs")
        from ..judges import build_judge
        from ..runner import judge_pending

        judge = build_judge(judge_name, overrides, n_cot=n_cot, seed=seed, backend=shared["backend"])
        judge_pending(judge, samples, on_row, first_cot=first_cot)  # the runner's loop and batch rule

    return generate


def run_scaling(judge_names: list[str], benches: list, ks: list[int], seeds: list[int], overrides: JudgeOverrides,
                cache_root: Path, limit: int | None = None, log_line=print, backend=None) -> list[CurvePoint]:
    """Fill the CoT caches up to max(K) for every judge, benchmark and seed; return the curves.

    ``backend``: an already loaded backend to use instead of creating one when CoTs are missing.
    """
    import time

    from ..judges import build_judge

    points: list[CurvePoint] = []
    kmax = max(ks)
    for judge_name in judge_names:
        base = build_judge(judge_name, dataclasses.replace(overrides, seed=None))  # no model yet
        if not base.variant.writes_cot:
            raise ConfigError(f"judge {judge_name} writes no CoT: more CoTs cannot change its score")
        key = cache_key(base.config)
        shared = {"judge": base, **({"backend": backend} if backend is not None else {})}
        for bench in benches:
            samples = bench.select(limit)
            caches = []
            for seed in seeds:
                cache = CotCache(cache_root, key, bench.name, seed)
                started = time.perf_counter()
                added = fill_cache(cache, samples, kmax, judge_generator(judge_name, overrides, seed, shared))
                log_line(f"{judge_name} x {bench.name} seed {seed}: "
                         + (f"sampled {added} new CoTs in {time.perf_counter() - started:.1f}s" if added
                            else f"all {kmax} CoTs per sample cached ({cache.path})"))
                caches.append(cache)
            points += curve(judge_name, bench.name, caches, [s.id for s in samples], ks)
    return points
