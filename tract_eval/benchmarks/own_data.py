"""Your own data as a benchmark: a table of (instruction, response, rubric[, reference][, score]) rows.

``--bench my.jsonl`` (or ``.json``, ``.csv``, ``.parquet``) or
``--bench hf:ORG/NAME[:SPLIT]``. Columns are found by their default names (``COLUMNS``) or mapped with
``--columns rubric=criteria,score=label``. Without a score column the run writes predictions only.
A rubric is either a Prometheus block (``[criteria]`` then ``Score k: ...`` lines) or plain text, which
becomes the criteria, with ``score{k}_description`` columns as the score lines when the table has them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import ConfigError, InputNotFoundError
from ..prompts import GradingFields, format_rubric
from .base import (BenchmarkCard, DataFormatError, LoaderOptions, LocatedData, Sample, parse_scale, read_json_rows,
                   read_text_utf8)

HUB_PREFIX = "hf:"
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # suffix -> format
# role -> default column name; --columns maps a role to another column
COLUMNS = {"id": "id", "instruction": "instruction", "response": "response", "rubric": "rubric",
           "reference": "reference", "score": "score"}
REQUIRED = ("instruction", "response", "rubric")
TABLE_LOADER = "table"


def is_data_spec(spec: str) -> bool:
    """``--bench`` names a data file or hub dataset rather than a benchmark card."""
    return spec.startswith(HUB_PREFIX) or Path(spec).suffix.lower() in FORMATS


def parse_columns(text: str | dict | None) -> dict[str, str]:
    """``rubric=criteria,score=label`` -> {"rubric": "criteria", "score": "label"} (roles checked)."""
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for item in text.split(","):
            role, sep, column = item.partition("=")
            if not sep or not role.strip() or not column.strip():
                raise ConfigError(f"--columns takes ROLE=COLUMN pairs separated by commas, not {item!r}")
            pairs.append((role.strip(), column.strip()))
    unknown = sorted(role for role, _ in pairs if role not in COLUMNS)
    if unknown:
        raise ConfigError(f"--columns: unknown role(s) {unknown}; known: {', '.join(COLUMNS)}")
    return dict(pairs)


def data_card(spec: str, columns: str | dict | None = None, scale=None) -> BenchmarkCard:
    """A benchmark card for a data file or ``hf:ORG/NAME[:SPLIT]``; it is named after the file or dataset."""
    options = {"columns": parse_columns(columns)}
    scale = parse_scale(scale) if scale is not None else (1, 5)
    if spec.startswith(HUB_PREFIX):
        hub_id, _, split = spec[len(HUB_PREFIX):].partition(":")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id):
            raise ConfigError(f"--bench {spec}: expected hf:ORG/NAME or hf:ORG/NAME:SPLIT")
        name = hub_id.split("/")[1] + (f"-{split}" if split else "")
        return BenchmarkCard(name=name, title=hub_id, kind="absolute", loader=TABLE_LOADER, hub_id=hub_id,
                             hub_split=split or "train", scale=scale, options=options)
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"--bench {spec}: no such file")
    return BenchmarkCard(name=path.stem, title=path.stem, kind="absolute", loader=TABLE_LOADER,
                         files=[str(path)], scale=scale, options=options)


def read_table(path: Path) -> list[dict]:
    """Rows of a .jsonl/.json/.csv/.parquet file. JSON and CSV are read here (the JSON parser and ``csv``
    name the line or row at fault, and a UTF-8 byte-order mark is accepted); Parquet through ``datasets``."""
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataFormatError(str(path), None, None, f"unknown table format; use one of {', '.join(FORMATS)}")
    if builder == "json":
        rows = read_json_rows(path, lines=True if path.suffix.lower() == ".jsonl" else None)
    elif builder == "csv":
        rows = _read_csv(path)
    else:
        rows = _read_with_datasets(path, builder)
    if not rows:
        raise DataFormatError(str(path), None, None, "holds no rows" + (" (only a header)" if builder == "csv"
                                                                        and path.stat().st_size else ""))
    return rows


def _read_csv(path: Path) -> list[dict]:
    """CSV has no types: every cell is text (a response "4" stays "4"); scores are parsed later."""
    import csv
    import io

    text = read_text_utf8(path).removeprefix("\ufeff")  # the byte-order mark some spreadsheets write
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise DataFormatError(str(path), None, None, f"the header repeats the column(s) {duplicated}")
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise DataFormatError(str(path), len(rows) + 1, None,
                                      f"has {len(cells)} cells, the header {len(header)} (line {reader.line_num})")
            rows.append(dict(zip(header, cells)))
    except csv.Error as exc:
        raise DataFormatError(str(path), None, None, f"cannot read it as csv: line {reader.line_num}: {exc}") from None
    return rows


def _read_with_datasets(path: Path, builder: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for an unreadable file; the first line says why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(str(path), None, None, f"cannot read it as {builder}: {reason}") from exc
    return [dict(row) for row in table]


def _empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _rubric(row: dict, text: str, scale: tuple[int, int]) -> str:
    """A Prometheus rubric block as is; plain text as the criteria, plus score descriptions if the row has them."""
    low, high = scale
    if text.lstrip().startswith("[") or re.search(rf"^Score {low}:", text, flags=re.M):
        return text
    descriptions = [row.get(f"score{k}_description") for k in range(low, high + 1)]
    if all(isinstance(d, str) and d.strip() for d in descriptions):
        return format_rubric(text, descriptions, low)
    return f"[{text.strip()}]"


def load_table(card: BenchmarkCard, located: LocatedData, options: dict) -> list[Sample]:
    if located.hub_rows is not None:
        tables = [(located.source, located.hub_rows)]
    else:
        tables = [(str(path), read_table(Path(path))) for path in located.paths]
    mapped = parse_columns(card.options.get("columns"))
    names = {**COLUMNS, **mapped}
    drop_reference = options.get("drop_reference", LoaderOptions.drop_reference)
    low, high = card.scale
    samples, seen = [], {}
    for source, rows in tables:
        present = set(rows[0]) if rows else set()
        for role in REQUIRED:
            if names[role] not in present:
                hint = "" if role in mapped else f" (map yours with --columns {role}=NAME)"
                raise DataFormatError(source, None, names[role],
                                      f"no such column{hint}; the table has: {', '.join(sorted(present))}")
        has_gold = names["score"] in present
        for number, row in enumerate(rows, start=1):
            texts = {}
            for role in REQUIRED:
                value = row.get(names[role])
                if _empty(value) or not isinstance(value, str):
                    raise DataFormatError(source, number, names[role], f"needs non-empty text, got {value!r}")
                texts[role] = value
            reference = row.get(names["reference"])
            if _empty(reference) or drop_reference:
                reference = None
            elif not isinstance(reference, str):
                raise DataFormatError(source, number, names["reference"], f"needs text, got {reference!r}")
            gold = None
            if has_gold:
                value = row.get(names["score"])
                try:  # true/false are not scores, although float(True) is 1.0
                    gold = math.nan if isinstance(value, bool) else float(value)
                except (TypeError, ValueError):
                    gold = math.nan
                if not math.isfinite(gold):
                    raise DataFormatError(source, number, names["score"], f"needs a number, got {value!r} "
                                          "(drop the column to write predictions only)")
                if not low <= gold <= high:
                    raise DataFormatError(source, number, names["score"],
                                          f"{value!r} is outside the scale {low}-{high} (set it with --scale LOW-HIGH)")
            sample_id = str(row[names["id"]]) if not _empty(row.get(names["id"])) else str(number)
            if sample_id in seen:
                raise DataFormatError(source, number, names["id"], f"repeats id {sample_id!r} of row {seen[sample_id]}")
            seen[sample_id] = number
            fields = GradingFields(texts["instruction"], texts["response"], _rubric(row, texts["rubric"], card.scale),
                                   reference, card.scale)
            samples.append(Sample(sample_id, fields, gold, {"row": number}))
    return samples
