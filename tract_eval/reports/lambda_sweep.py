"""Paper Figure 2: average Pearson r of judges trained with different λ (CoT-RAFT's score weight).

Each λ is its own training run (``tract-eval train --lambda 0.2,0.5,...`` writes
``OUT/lambda-<λ>/``) evaluated by ``tract-eval run --model OUT/lambda-<λ>``; λ is read from the
``training_summary.json`` next to the model the run's manifest names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..metrics import absolute_metrics
from .runs import Run, RunFormatError

SUMMARY = "training_summary.json"


@dataclass
class SweepPoint:
    judge: str
    score_weight: float
    pearson: dict[str, float | None]  # per absolute benchmark

    @property
    def average(self) -> float | None:
        values = [v for v in self.pearson.values() if v is not None]
        return sum(values) / len(values) if values else None


def score_weight_of(run: Run) -> float:
    model = run.manifest.judge.get("model")
    if not model:
        raise RunFormatError(f"{run.path}: its manifest names no trained model, so it has no λ")
    folder = Path(model)
    for candidate in (folder / SUMMARY, folder.parent / SUMMARY):
        if candidate.is_file():
            return float(json.loads(candidate.read_text())["score_weight"])
    raise RunFormatError(f"{run.path}: no {SUMMARY} next to its model {model} (was it trained by tract-eval train?)")


def sweep_points(runs: list[Run]) -> list[SweepPoint]:
    by_judge: dict[str, SweepPoint] = {}
    for run in runs:
        if run.pairwise:
            continue
        point = by_judge.setdefault(run.judge, SweepPoint(run.judge, score_weight_of(run), {}))
        weight = score_weight_of(run)
        if weight != point.score_weight:
            raise RunFormatError(f"judge folder {run.judge!r} mixes models trained with λ={point.score_weight} and λ={weight}")
        point.pearson[run.bench] = absolute_metrics(run.rows)["pearson"]
    if not by_judge:
        raise RunFormatError("no absolute-benchmark runs to plot")
    return sorted(by_judge.values(), key=lambda p: p.score_weight)


def write_sweep(points: list[SweepPoint], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tabulate import tabulate

    out_dir.mkdir(parents=True, exist_ok=True)
    benches = sorted({b for p in points for b in p.pearson})
    rows = [[f"{p.score_weight:g}", p.judge, *[p.pearson.get(b) for b in benches], p.average] for p in points]
    table = tabulate(rows, headers=["λ", "judge", *[f"{b} r" for b in benches], "average r"],
                     tablefmt="github", floatfmt=".3f", missingval="–")
    (out_dir / "lambda_sweep.md").write_text(table + "\n")
    (out_dir / "lambda_sweep.json").write_text(json.dumps(
        [{"lambda": p.score_weight, "judge": p.judge, "pearson": p.pearson, "average": p.average} for p in points],
        indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p.score_weight for p in points], [p.average for p in points], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("λ (weight of the squared-error term)")
    ax.set_ylabel(f"average Pearson r ({', '.join(benches)})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written = [out_dir / "lambda_sweep.md", out_dir / "lambda_sweep.json"]
    for suffix in (".png", ".svg"):
        fig.savefig(out_dir / f"lambda_sweep{suffix}", dpi=150, metadata={"Date": None} if suffix == ".svg" else None)
        written.append(out_dir / f"lambda_sweep{suffix}")
    plt.close(fig)
    return written
