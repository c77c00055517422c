"""The two pictures ``diagnose`` writes next to ``diagnostics.json``: a reliability diagram and the mean
predicted distribution per gold score point. matplotlib's object API on the Agg canvas: no pyplot state,
no display needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

RELIABILITY_PLOT = "reliability.png"
DISTRIBUTION_PLOT = "distribution.png"
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(diagnostics: dict, path: Path) -> Path:
    """Accuracy (argmax = rounded gold) against mean confidence per bin, the diagonal, each bin's count."""
    cal = diagnostics["calibration"]
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    filled = [b for b in cal["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in filled]
    ax.bar(centres, [b["accuracy"] for b in filled], width=0.09, color="#4C72B0", alpha=0.8,
           label="accuracy in bin")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="#DD8452",
            label="(mean confidence, accuracy)")
    for centre, b in zip(centres, filled):
        ax.annotate(f"n={b['count']}", (centre, b["accuracy"]), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence: max probability of the distribution")
    ax.set_ylabel("accuracy: mode = gold rounded half up")
    ece = cal["ece"]
    ax.set_title(f"{diagnostics['judge']} on {diagnostics['bench']}: reliability "
                 f"(ECE {ece:.3f}, n={cal['n']})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_distribution(diagnostics: dict, points: list[int], by_gold: dict[int, tuple[np.ndarray, int]],
                      path: Path) -> Path:
    """A heat map: one row per gold point (rows whose rounded gold is that point), one column per score,
    each cell the mean predicted probability, written in the cell."""
    golds = sorted(by_gold)
    matrix = np.array([by_gold[y][0] for y in golds])
    fig = _figure(max(5.2, 1.6 + 0.62 * len(points)), max(3.2, 1.4 + 0.5 * len(golds)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value > 0.55 else "black")
    ax.set_xticks(range(len(points)), [str(k) for k in points])
    ax.set_yticks(range(len(golds)), [f"{y} (n={by_gold[y][1]})" for y in golds])
    ax.set_xlabel("predicted score k")
    ax.set_ylabel("gold score, rounded half up")
    ax.set_title(f"{diagnostics['judge']} on {diagnostics['bench']}: mean predicted distribution", fontsize=10)
    fig.colorbar(image, ax=ax, label="mean probability")
    fig.tight_layout()
    fig.savefig(path)
    return path
