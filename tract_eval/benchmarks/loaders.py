"""Row loaders: Prometheus-format absolute grading files and RewardBench pairs."""
from __future__ import annotations

import dataclasses
import math
from itertools import zip_longest
from pathlib import Path

from ..errors import ConfigError
from ..prompts import GradingFields, PromptFormatError, format_rubric, parse_prometheus_prompt
from ..registry import Registry
from .base import BenchmarkCard, DataFormatError, LoaderOptions, LocatedData, Sample, read_json_rows

LOADERS: Registry = Registry("benchmark loader")


def _rows(located: LocatedData) -> list[tuple[str, int, dict]]:
    """(source, 1-based row number, row) for every row, from files or hub rows."""
    if located.hub_rows is not None:
        return [(located.source, i, r) for i, r in enumerate(located.hub_rows, start=1)]
    out = []
    for path in located.paths:
        out += [(str(path), i, r) for i, r in enumerate(read_json_rows(Path(path)), start=1)]
    return out


def gold_from_row(row: dict, source: str, number: int, fields: tuple[str, ...]) -> float:
    """Gold label: the mean of a score list (TRACT uses np.mean(gpt4_score)) or a single score."""
    for name in fields:
        if name not in row or row[name] is None:
            continue
        value = row[name]
        values = value if isinstance(value, list) else [value]
        # numbers, or numbers written as strings (the hub's Feedback Bench has "4"); true is not a score
        try:
            if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in values):
                raise ValueError
            numbers = [float(v) for v in values]
        except ValueError:
            raise DataFormatError(source, number, name, f"expected a score or list of scores, got {value!r}") from None
        if not numbers or not all(math.isfinite(v) for v in numbers):
            raise DataFormatError(source, number, name, f"empty or non-finite scores {value!r}")
        return sum(numbers) / len(numbers)
    raise DataFormatError(source, number, "/".join(fields), "no gold score in this row")


def _prometheus_fields(row: dict, source: str, number: int, drop_reference: bool) -> GradingFields:
    if isinstance(row.get("instruction"), str) and row["instruction"].startswith("###Task Description"):
        try:
            fields = parse_prometheus_prompt(row["instruction"])
        except PromptFormatError as exc:
            raise DataFormatError(source, number, "instruction", str(exc)) from None
    else:  # the Hugging Face layout (prometheus-eval/Feedback-Bench): orig_* columns
        needed = ["orig_instruction", "orig_response", "orig_criteria"] + [f"orig_score{i}_description" for i in range(1, 6)]
        for name in needed:
            if not isinstance(row.get(name), str):
                raise DataFormatError(source, number, name, "missing: need a pre-formatted 'instruction' or the orig_* columns")
        fields = GradingFields(
            instruction=row["orig_instruction"],
            response=row["orig_response"],
            rubric=format_rubric(row["orig_criteria"], [row[f"orig_score{i}_description"] for i in range(1, 6)]),
            reference_answer=row.get("orig_reference_answer"),
        )
    if drop_reference:  # TRACT's --remove_reference: judges cut the section out of the model input
        fields = dataclasses.replace(fields, remove_reference=True)
    return fields


@LOADERS.register("prometheus-absolute")
def load_prometheus_absolute(card: BenchmarkCard, located: LocatedData, options: dict) -> list[Sample]:
    gold_fields = tuple(card.options.get("gold_fields", ["gpt4_score", "orig_score"]))
    samples, seen = [], set()
    for source, number, row in _rows(located):
        fields = _prometheus_fields(row, source, number, options.get("drop_reference", LoaderOptions.drop_reference))
        gold = gold_from_row(row, source, number, gold_fields)
        key = [str(row[k]) for k in card.options.get("id_fields", ["idx", "response_source"]) if k in row]
        sample_id = ":".join(key) if key else str(number)
        if sample_id in seen:
            sample_id = f"{sample_id}#{number}"
        seen.add(sample_id)
        meta = {k: row[k] for k in ("category", "response_source", "idx") if k in row}
        meta["row"] = number
        samples.append(Sample(sample_id, fields, gold, meta))
    return samples


@LOADERS.register("rewardbench")
def load_rewardbench(card: BenchmarkCard, located: LocatedData, options: dict) -> list[Sample]:
    """Two samples per pair (chosen, rejected), graded absolutely under a generic rubric.

    Pairs are interleaved across sections so that ``--limit`` takes a prefix that
    covers every section (and a larger limit extends the same prefix).
    """
    section_of = card.options.get("sections", {})
    rubric = card.options.get("rubric")
    if not isinstance(rubric, str) or not rubric.strip():
        raise ConfigError(f"{card.path or card.name}: options.rubric: a pairwise card needs the rubric both "
                          "sides are graded with")
    rubric = rubric.strip()
    by_section: dict[str, list[tuple[str, dict]]] = {}
    seen = set()
    for source, number, row in _rows(located):
        for name in ("id", "subset", "prompt", "chosen", "rejected"):
            if row.get(name) is None:
                raise DataFormatError(source, number, name, "missing")
        subset = row["subset"]
        section = row.get("section") or section_of.get(subset)
        if section is None:
            raise DataFormatError(source, number, "subset", f"unknown subset {subset!r}: no section mapping")
        pair_id = f"{subset}/{row['id']}"  # ids repeat across subsets
        if pair_id in seen:
            raise DataFormatError(source, number, "id", f"duplicate pair {pair_id}")
        seen.add(pair_id)
        by_section.setdefault(section, []).append((pair_id, {**row, "section": section}))
    missing = sorted(set(section_of.values()) - set(by_section))
    if missing:  # the leaderboard score averages all sections: a silently absent one would change it
        raise DataFormatError(located.source, None, None,
                              f"no pairs for {card.title} section(s) {', '.join(missing)} "
                              f"(sections found: {', '.join(sorted(by_section)) or 'none'})")
    samples = []
    for group in zip_longest(*[by_section[s] for s in sorted(by_section)]):
        for item in group:
            if item is None:
                continue
            pair_id, row = item
            for side in ("chosen", "rejected"):
                fields = GradingFields(instruction=row["prompt"], response=row[side], rubric=rubric, reference_answer=None)
                meta = {"subset": row["subset"], "section": row["section"], "pair_id": pair_id, "side": side}
                samples.append(Sample(f"{pair_id}/{side}", fields, None, meta))
    return samples
