"""``diagnose``'s printed tables (plain text or Markdown) from ``{judge: {bench: diagnostics}}``."""
from __future__ import annotations

from .runs import bench_order

ABSOLUTE_COLUMNS = (
    # (heading, path into the diagnostics, digits)
    ("n", ("n",), 0),
    ("failed", ("failures", "failed"), 0),
    ("ECE", ("calibration", "ece"), 3),
    ("Brier", ("calibration", "brier"), 3),
    ("NLL", ("calibration", "nll"), 3),
    ("CRPS", ("calibration", "crps"), 3),
    ("cov90", ("calibration", "coverage", "0.9"), 2),
    ("r mean", ("readouts", "mean", "pearson"), 3),
    ("r mode", ("readouts", "mode", "pearson"), 3),
    ("r median", ("readouts", "median", "pearson"), 3),
    ("r (fail=mid)", ("failures", "at_midpoint", "pearson"), 3),
    ("α int", ("agreement", "krippendorff_alpha_interval"), 3),
    ("α ord", ("agreement", "krippendorff_alpha_ordinal"), 3),
    ("κ w", ("agreement", "weighted_kappa"), 3),
    ("H nats", ("distribution", "entropy"), 3),
    ("mass", ("distribution", "candidate_mass"), 3),
    ("ρ len,resid", ("length_bias", "residual_spearman"), 3),
    ("s/sample", ("cost", "mean", "seconds"), 2),
)
PAIRWISE_COLUMNS = (
    ("pairs", ("pairs", "n"), 0),
    ("unscored", ("pairs", "unscored"), 0),
    ("accuracy", ("accuracy",), 3),
    ("tie rate", ("tie_rate",), 3),
    ("mean margin", ("margin", "mean"), 3),
    ("acc chosen longer", ("length_bias", "chosen_longer", "accuracy"), 3),
    ("acc chosen shorter", ("length_bias", "chosen_shorter", "accuracy"), 3),
    ("H nats", ("distribution", "entropy"), 3),
    ("s/sample", ("cost", "mean", "seconds"), 2),
)


def _get(data: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _cell(value, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if digits else str(int(value))


def _ordered(results: dict[str, dict[str, dict]]) -> list[dict]:
    benches = bench_order({b for per in results.values() for b in per})
    return [results[j][b] for b in benches for j in sorted(results) if b in results[j]]


def _grid(headings: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "markdown":
        lines = ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headings), line(["-" * w for w in widths]), *(line(r) for r in rows)]) + "\n"


def _kind_table(diagnostics: list[dict], columns, fmt: str) -> str:
    headings = ["judge", "bench", *(c[0] for c in columns)]
    rows = [[d["judge"], d["bench"], *(_cell(_get(d, path), digits) for _, path, digits in columns)]
            for d in diagnostics]
    return _grid(headings, rows, fmt)


def agreement_tables(results: dict[str, dict[str, dict]], fmt: str) -> str:
    """Each judge's entropy, ECE and α across its CoTs side by side; α between every two judges per benchmark."""
    ordered = _ordered(results)
    spread = [[d["judge"], d["bench"], _cell(_get(d, ("distribution", "entropy")), 3),
               _cell(_get(d, ("calibration", "ece")), 3),
               _cell(_get(d, ("agreement", "within_judge_cots_alpha_interval")), 3)] for d in ordered]
    text = "Spread and calibration per judge (does a CoT collapse the distribution?)\n\n"
    text += _grid(["judge", "bench", "entropy (nats)", "ECE", "α across CoTs"], spread, fmt)
    pairs = []
    for d in ordered:
        for other, value in sorted((_get(d, ("agreement", "between_judges")) or {}).items()):
            if d["judge"] < other:
                pairs.append([d["bench"], d["judge"], other, str(value["n"]), _cell(value["alpha_interval"], 3)])
    text += "\nKrippendorff's α (interval) between judges, on the samples both scored\n\n"
    if pairs:
        text += _grid(["bench", "judge A", "judge B", "n", "α interval"], pairs, fmt)
    else:
        text += "(no benchmark was run by two judges)\n"
    return text


def render_diagnostics(results: dict[str, dict[str, dict]], fmt: str, agreement: bool = False) -> str:
    ordered = _ordered(results)
    absolute = [d for d in ordered if d["kind"] == "absolute"]
    pairwise = [d for d in ordered if d["kind"] == "pairwise"]
    parts = []
    if absolute:
        parts.append("Absolute benchmarks\n\n" + _kind_table(absolute, ABSOLUTE_COLUMNS, fmt))
    if pairwise:
        parts.append("Pairwise benchmarks\n\n" + _kind_table(pairwise, PAIRWISE_COLUMNS, fmt))
    if agreement:
        parts.append(agreement_tables(results, fmt))
    return "\n".join(parts)
