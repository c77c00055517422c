"""The Python API: grade your own rows, or evaluate judges on benchmarks, as ``tract-eval run`` does.

    from tract_eval import grade
    g = grade("What is 2+2?", "4", "Is the answer correct?", judge="rail")
    g.score, g.probs, g.status

Everything goes through the runner the command line uses (``runner.judge_pending`` is the one loop
that judges; ``evaluate`` writes the same files). A model loads once per process: later calls on the same
model, backend and options reuse it (``backends.create_backend`` keeps the last one), whatever the judge.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container, ContextManager, Iterable, Mapping, Sequence

from .errors import ConfigError, InputNotFoundError
from .records import MANIFEST, RESULTS, Prediction, write_json_atomic

if TYPE_CHECKING:
    from .judge_config import JudgeOverrides

DEFAULT_OUT = Path("runs")
# (label, total samples) -> a context manager giving the run's progress(k) callback
ProgressFor = Callable[[str, int], ContextManager[Callable[[int], None] | None]]
OnRun = Callable[[Any, Any, Any], None]  # (judge, benchmark, runner.RunResult), after results.json is written


@dataclass
class Grade:
    """One graded response."""

    score: float | None  # the judge's score (mean over its CoTs), None when no score could be read
    probs: dict[int, float] | None  # score -> probability renormalised over the scale (mean over CoTs); None for decode judges
    cots: list[str]  # what the judge wrote before its score, one per CoT
    status: str  # "ok", "parse_failure", "fallback", ... (see tract_eval.records.STATUSES)
    record: Prediction  # the full row, as predictions.jsonl holds it

    @classmethod
    def from_prediction(cls, row: Prediction) -> "Grade":
        probs = None
        if row.score_probs:
            scores = sorted({int(s) for p in row.score_probs for s in p})
            probs = {s: sum(p.get(str(s), 0.0) for p in row.score_probs) / len(row.score_probs) for s in scores}
        return cls(row.prediction, probs, list(row.cots), row.status, row)


# -- shared with the command line -------------------------------------------------------------------------

def bench_specs(spec: str | Sequence[str]) -> list[str]:
    """Benchmark names, data files or ``hf:`` datasets from a comma list (or a list); ``all`` = every card."""
    from .benchmarks import benchmark_names

    if isinstance(spec, str):
        if spec == "all":
            return benchmark_names()
        spec = spec.split(",")
    names = [str(s).strip() for s in spec if str(s).strip()]
    if not names:
        raise ConfigError(f"--bench names nothing: {spec!r}")
    return names


def load_benches(spec: str | Sequence[str], data_dir: str | Path | None = None, *, columns=None, scale=None,
                 no_reference: bool = False, unparsed_pairs: str = "half",
                 on_skip: Callable[[str, str], None] | None = None, kinds: Container[str] | None = None,
                 annotated: bool = False) -> list:
    """The benchmarks to run, loaded and checked before any model loads.

    ``columns`` and ``scale`` apply to own data (files and ``hf:`` datasets). ``unparsed_pairs``: a
    RewardBench pair with an unscored side counts 0.5 (``"half"``, as reward-bench) or is left out
    (``"exclude"``). ``kinds``: the kinds of benchmark a command takes (None: any). With ``all``,
    benchmarks whose data is unavailable or whose kind is not wanted are passed to ``on_skip(name,
    reason)``, and with ``annotated`` only those whose card names annotation CoT fields are taken;
    named ones must load and be of a wanted kind.
    """
    from .benchmarks import DataUnavailable, is_data_spec, load_benchmark
    from .metrics import UNPARSED_PAIR_POLICIES

    if unparsed_pairs not in UNPARSED_PAIR_POLICIES:
        raise ConfigError(f"unparsed pairs: choose one of {', '.join(UNPARSED_PAIR_POLICIES)}, not {unparsed_pairs!r}")

    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputNotFoundError(f"--data-dir {data_dir}: no such folder")
    names = bench_specs(spec)
    if (columns or scale is not None) and not any(is_data_spec(n) for n in names):
        raise ConfigError("--columns and --scale apply to your own data (--bench FILE or hf:ORG/NAME); "
                          "a benchmark card says its own columns and scale")
    benches = []
    for name in names:
        own = is_data_spec(name)
        if not own and not _card_wanted(name, spec == "all", kinds, annotated, on_skip):
            continue
        try:
            bench = load_benchmark(name, data_dir, columns=columns if own else None, scale=scale if own else None,
                                   drop_reference=no_reference, unparsed_pairs=unparsed_pairs)
        except DataUnavailable as exc:
            if spec != "all":
                raise
            if on_skip:
                on_skip(name, str(exc))
            continue
        _check_kind(name, bench.kind, kinds)
        benches.append(bench)
    if not benches:
        raise DataUnavailable("no benchmark data available (see the skipped reasons above)")
    return benches


def _card_wanted(name: str, every: bool, kinds, annotated: bool, on_skip) -> bool:
    """Is the benchmark card ``name`` one to load? Asked before its data loads; with ``all`` (``every``)
    a card of another kind is skipped, a named one is refused."""
    if kinds is None and not annotated:
        return True
    from .benchmarks import load_card

    card = load_card(name)
    if every and annotated and not card.annotation_cots:
        return False
    if every and kinds is not None and card.kind not in kinds:
        if on_skip:
            on_skip(name, f"{card.kind} benchmark")
        return False
    _check_kind(name, card.kind, kinds)
    return True


def _check_kind(name: str, kind: str, kinds) -> None:
    if kinds is not None and kind not in kinds:
        raise ConfigError(f"{name} is a {kind} benchmark; this command needs {' or '.join(kinds)} ones")


def judge_names(spec: str | Sequence[str]) -> list[str]:
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise ConfigError(f"--judge names nothing: {spec!r}")
    return names


def write_results(result, judge, bench, ci: bool = False, resamples: int = 1000, seed: int = 0) -> dict:
    """``results.json`` next to the predictions: what ran (config, model, backend), the metrics, their
    bootstrap intervals when asked, and package versions, as one JSON object for other tools."""
    from .redaction import redact

    folder = Path(result.out_dir)
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    backend = redact(judge.backend.describe()) if judge._backend is not None else manifest.get("backend")
    last_session = (manifest.get("sessions") or [{}])[-1]
    results = {
        "judge": judge.name,
        "bench": bench.name,
        "bench_card": bench.card.describe(),
        "config": manifest.get("judge") or redact(judge.config.to_dict()),
        "model": (backend or {}).get("model") or judge.config.model,
        "model_identity": (manifest.get("identity") or {}).get("model"),
        "model_note": judge.model_note or manifest.get("model_note"),
        "backend": backend,
        "metrics": result.metrics,
        "intervals": _intervals(folder, resamples, seed) if ci and bench.has_gold else None,
        "versions": last_session.get("versions"),
        "git_revision": last_session.get("git_revision"),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(folder / RESULTS, results)
    return results


def _intervals(folder: Path, resamples: int, seed: int) -> dict:
    """Percentile bootstrap intervals of every report measure for one run (the report's own machinery)."""
    from .reports.runs import load_run
    from .reports.stats import MEASURES
    from .reports.table import build_table

    run = load_run(folder)
    table = build_table([run], list(MEASURES), ci=True, resamples=resamples, seed=seed)
    out = {}
    for (_, column), cell in table.cells.items():
        if cell.estimate is not None and column.group == run.bench:
            out[column.measure] = cell.estimate.to_dict()
    return {"resamples": resamples, "seed": seed, "confidence": table.confidence, "measures": out}


# -- the API ------------------------------------------------------------------------------------------------

def evaluate(judge: str | Sequence[str], bench: str | Sequence[str], *, limit: int | None = None,
             out: str | Path | None = None, data_dir: str | Path | None = None, columns: str | dict | None = None,
             scale: str | Sequence[int] | None = None, no_reference: bool = False, unparsed_pairs: str = "half",
             shard: str | None = None, too_long: str = "mark", ci: bool = False, rejudge_failures: bool = False,
             progress: Callable[[int], None] | None = None, overrides: JudgeOverrides | None = None,
             progress_for: ProgressFor | None = None, on_skip: Callable[[str, str], None] | None = None,
             on_run: OnRun | None = None, **settings) -> dict:
    """Run judge(s) over benchmark(s) as ``tract-eval run`` does, writing the same files under ``out``
    (default ``runs/``): ``OUT/<judge>/<bench>/{predictions.jsonl, metrics.json, manifest.json, results.json}``.

    ``bench``: card names, data files (.jsonl/.json/.csv/.parquet) or ``hf:ORG/NAME[:SPLIT]``;
    ``settings``: judge settings (``model``, ``n_cot``, ``seed``, ``temperature``, ``max_new_tokens``,
    ``run_name``, ...: the fields of ``JudgeOverrides``, winning over ``overrides``). ``progress(k)``
    hears of every k finished samples; ``progress_for(label, total)``, a context manager giving such a
    callback, is entered around each (judge, benchmark) run instead. ``on_skip(name, reason)``: a
    benchmark ``all`` skips; ``on_run(judge, bench, result)``: each finished run. Returns ``{bench:
    metrics}`` for one judge, ``{judge: {bench: metrics}}`` for several.
    """
    from .benchmarks import check_limit
    from .judges import build_judge
    from .judge_config import JudgeOverrides
    from .runner import parse_shard, run_benchmark

    # everything a user can get wrong is checked before any data or model loads (Benchmark.select checks
    # --limit again for callers that do not come through here)
    check_limit(limit)
    shard_spec = parse_shard(shard)
    names = judge_names(judge)
    overrides = (overrides or JudgeOverrides()).merged(JudgeOverrides.from_settings(settings))
    _check_run_name(overrides.run_name, names)
    for name in names:
        build_judge(name, overrides)
    benches = load_benches(bench, data_dir, columns=columns, scale=scale, no_reference=no_reference,
                           unparsed_pairs=unparsed_pairs, on_skip=on_skip)
    selected = {b.name: len(b.select(limit)) for b in benches}
    enter = progress_for or (lambda label, total: contextlib.nullcontext(progress))
    metrics: dict[str, dict] = {}
    for name in names:
        for b in benches:
            judged = build_judge(name, dataclasses.replace(overrides, scale=b.card.scale))
            with enter(f"{judged.name} × {b.name}", selected[b.name]) as advance:
                result = run_benchmark(judged, b, Path(out or DEFAULT_OUT), limit=limit, shard=shard_spec,
                                       batch_size=overrides.batch_size, too_long=too_long,
                                       rejudge_failures=rejudge_failures, progress=advance)
            write_results(result, judged, b, ci=ci)
            if on_run:
                on_run(judged, b, result)
            metrics.setdefault(judged.name, {})[b.name] = result.metrics
    return next(iter(metrics.values())) if len(names) == 1 else metrics


def _check_run_name(run_name: str | None, judges: list[str]) -> None:
    from .runner import check_plain_name

    if run_name is None:
        return
    if len(judges) > 1:
        raise ConfigError("--run-name names one judge's folder; run one judge at a time with it")
    check_plain_name(run_name, "--run-name")


Row = Mapping[str, Any] | Sequence[Any]


def grading_samples(rows: Iterable[Row], scale: tuple[int, int] = (1, 5), source: str = "rows") -> list:
    """Own-data samples from rows (mappings with ``instruction``, ``response``, ``rubric`` and optional
    ``reference`` and ``id``, or tuples in that order), checked as own-data files are; a row's id, which
    seeds its CoTs' random streams, is its 1-based position unless it names one. ``grade_many`` and
    ``tract-eval serve`` both build their samples here, so equal rows get equal scores."""
    from .benchmarks import LocatedData
    from .benchmarks.base import BenchmarkCard
    from .benchmarks.own_data import TABLE_LOADER, load_table

    table = []
    for number, row in enumerate(rows, start=1):
        if isinstance(row, Mapping):
            table.append({"id": str(number), **row})
        else:
            values = list(row)
            if not 3 <= len(values) <= 4:
                raise ConfigError(f"row {number}: expected (instruction, response, rubric[, reference]), "
                                  f"got {len(values)} values")
            table.append(dict(zip(("instruction", "response", "rubric", "reference"), values), id=str(number)))
    if not table:
        return []
    card = BenchmarkCard(name="api", title="tract_eval.grade", kind="absolute", loader=TABLE_LOADER, scale=scale)
    return load_table(card, LocatedData(source, hub_rows=table), {})


def grade_many(rows: Iterable[Row], *, judge: str = "tract", model: str | None = None,
               scale: str | Sequence[int] | None = None, **overrides) -> list[Grade]:
    """Grade several responses in batches. Each row is a mapping with ``instruction``, ``response``,
    ``rubric`` and optional ``reference`` (as in own-data files), or a tuple in that order."""
    from .benchmarks.base import parse_scale
    from .judge_config import JudgeOverrides
    from .judges import build_judge
    from .runner import judge_pending

    bounds = parse_scale(scale) if scale is not None else (1, 5)
    samples = grading_samples(rows, bounds)
    if not samples:
        return []
    # ``backend`` among the settings is a backend name: a setting, not build_judge's Backend object
    judged = build_judge(judge, JudgeOverrides.from_settings({**overrides, "model": model, "scale": bounds}))
    by_id: dict[str, Prediction] = {}
    judge_pending(judged, samples, lambda row: by_id.__setitem__(row.id, row), batch_size=overrides.get("batch_size"))
    return [Grade.from_prediction(by_id[s.id]) for s in samples]


def grade(instruction: str, response: str, rubric: str, reference: str | None = None, *, judge: str = "tract",
          model: str | None = None, scale: str | Sequence[int] | None = None, **overrides) -> Grade:
    """Grade one response against a rubric (plain text, or a Prometheus ``[criteria]`` + ``Score k:`` block).

    ``judge``: a judge card name or path; ``model``: HF id, local folder, .gguf or adapter (default: the
    card's, else the embedded SmolLM2); ``scale``: e.g. ``"1-10"`` (default 1-5); ``overrides``: judge
    settings such as ``n_cot``, ``seed``, ``temperature``, ``max_new_tokens``, ``device``.
    """
    row = {"instruction": instruction, "response": response, "rubric": rubric, "reference": reference}
    return grade_many([row], judge=judge, model=model, scale=scale, **overrides)[0]


def diagnose(path: str | Path | Sequence[str | Path], agreement: bool = False) -> dict[str, dict[str, dict]]:
    """Judge diagnostics of stored runs, as ``tract-eval diagnose``: calibration of the score distribution,
    mean/mode/median readouts, agreement with gold, failures, length bias and cost (docs/diagnose.md).
    Writes ``diagnostics.json`` and the plots into each run folder under ``path`` and returns
    ``{judge: {bench: diagnostics}}``; ``agreement`` adds α between every two judges on the same benchmark."""
    from .reports.diagnostics import diagnose as diagnose_runs  # numpy, scipy: only when asked

    return diagnose_runs(path, agreement=agreement)


__all__ = ["Grade", "diagnose", "evaluate", "grade", "grade_many", "grading_samples"]
