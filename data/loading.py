"""`load_preferences`: read a source, map it through a format adapter, validate every row."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Mapping

import datasets

from ._validation import (
    KWISE_COLUMNS,
    KWISE_SCORE_COLUMNS,
    MIXED_FORMS,
    PAIRWISE_COLUMNS,
    PAIRWISE_SCORE_COLUMNS,
    InvalidRowError,
    ValidationReport,
    check_kwise_row,
    check_pairwise_row,
)
from .formats import FormatSpec, get_format

ON_INVALID = ("raise", "drop")
_CHECKS = {"pairwise": check_pairwise_row, "kwise": check_kwise_row}
_COLUMNS = {"pairwise": (PAIRWISE_COLUMNS, PAIRWISE_SCORE_COLUMNS), "kwise": (KWISE_COLUMNS, KWISE_SCORE_COLUMNS)}


# --------------------------------------------------------------------------- reading sources


# CSV cells are all text; these columns (by source name or column_map target) are parsed as numbers,
# every other column stays text, so a response "4" is not silently turned into the integer 4.
CSV_NUMERIC_COLUMNS = frozenset({"score_chosen", "score_rejected", "score_A", "score_B", "labels"})


def _csv_number(cell: str) -> Any:
    """int or float for a numeric cell (NaN / inf included, for validation to report); else the text."""
    for parse in (int, float):
        try:
            return parse(cell)
        except ValueError:
            pass
    return None if cell == "" else cell


def _read_file(path: Path, column_map: Mapping[str, str] | None = None) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None  # maybe JSON Lines with a .json name, as the Hub often has
            if isinstance(data, list):
                return data
            if data is not None:
                raise ValueError(f"{path}: a .json source must hold a list of row objects (or be JSON Lines)")
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        return rows
    if suffix == ".csv":
        import csv

        column_map = column_map or {}
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        numeric = {c for c in (rows[0] if rows else ()) if c in CSV_NUMERIC_COLUMNS or column_map.get(c) in CSV_NUMERIC_COLUMNS}
        return [{k: _csv_number(v) if k in numeric else v for k, v in row.items()} for row in rows]
    if suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv or .parquet")


def _read_source(source: Any, split: str | None, column_map: Mapping[str, str] | None = None) -> dict[str | None, list[dict]]:
    """{split name: rows}; the key None means "a single dataset, not a DatasetDict"."""
    if isinstance(source, datasets.DatasetDict) or (
        isinstance(source, Mapping) and source and all(isinstance(v, (str, os.PathLike)) for v in source.values())
    ):
        names = list(source)
        if split is not None:
            if split not in source:
                raise ValueError(f"split {split!r} not in the source; it has {names}")
            names = [split]
        if not isinstance(source, datasets.DatasetDict):
            missing = [str(path) for path in source.values() if not Path(path).is_file()]
            if missing:
                raise ValueError(
                    f"a dict source maps split names to files, and {missing} are not files; pass rows as a list of dicts"
                )
        read = (lambda v: v.to_list()) if isinstance(source, datasets.DatasetDict) else (lambda v: _read_file(Path(v), column_map))
        rows = {name: read(source[name]) for name in names}
        return {None: rows[split]} if split is not None else rows
    if split is not None:
        raise ValueError("split= selects a split of a DatasetDict or of a {split: path} mapping; this source has no splits")
    if isinstance(source, datasets.Dataset):
        return {None: source.to_list()}
    if isinstance(source, (str, os.PathLike)):
        return {None: _read_file(Path(source), column_map)}
    if isinstance(source, list):
        if not all(isinstance(row, Mapping) for row in source):
            raise TypeError("a list source must hold dicts (one per row)")
        return {None: [dict(row) for row in source]}
    raise TypeError(
        f"source must be a datasets.Dataset / DatasetDict, a list of dicts, a file path or a {{split: path}} mapping; got {type(source).__name__}"
    )


def _rename(rows: list[dict], column_map: Mapping[str, str] | None) -> list[dict]:
    if not column_map:
        return rows
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    missing = [name for name in column_map if name not in present]
    if rows and missing:
        raise ValueError(f"column_map names column(s) {missing} that the source does not have; it has {sorted(present)}")
    clashes = sorted(target for source, target in column_map.items() if target in present and target not in column_map)
    if clashes:
        raise ValueError(f"column_map would overwrite existing column(s) {clashes}; map or drop them first")
    return [{column_map.get(key, key): value for key, value in row.items()} for row in rows]


# --------------------------------------------------------------------------- mapping and validation


def _convert_split(rows: list[dict], format: str, on_invalid: str, options: dict) -> tuple[datasets.Dataset, ValidationReport]:
    columns = set().union(*(row.keys() for row in rows)) if rows else set()
    spec = get_format(format).resolve(columns)
    _check_options(spec, options)
    check = _CHECKS[spec.schema]
    required, score_columns = _COLUMNS[spec.schema]
    report = ValidationReport(total=len(rows))
    converted: list[dict] = []
    form_of_first: tuple[int, str] | None = None
    for index, row in enumerate(rows):
        try:
            canonical = spec.adapter(row, **options)
            form = check(canonical)
            # Arrow columns have one type, and TRL treats a dataset as all-standard or all-conversational.
            if form_of_first is None:
                form_of_first = (index, form)
            elif form != form_of_first[1]:
                raise InvalidRowError(None, "prompt", MIXED_FORMS, f"this row is {form}, row {form_of_first[0]} is {form_of_first[1]}")
        except InvalidRowError as error:
            error = error.at_row(index)
            if on_invalid == "raise":
                raise error from None
            report.record(error)
            continue
        passthrough = {k: v for k, v in row.items() if k not in spec.consumes and k not in canonical}
        converted.append({**canonical, **passthrough})
    report.kept = len(converted)
    present_scores = [c for c in score_columns if any(r.get(c) is not None for r in converted)]
    extra = [c for c in dict.fromkeys(k for r in converted for k in r) if c not in required and c not in score_columns]
    names = [*required, *present_scores, *extra]
    table = {name: [r.get(name) for r in converted] for name in names}
    return datasets.Dataset.from_dict(table), report


def _check_options(spec: FormatSpec, options: dict) -> None:
    """Options are the adapter's parameters after the row (those with defaults)."""
    accepted = sorted(
        name
        for name, parameter in inspect.signature(spec.adapter).parameters.items()
        if parameter.default is not parameter.empty
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"format {spec.name!r} takes no option(s) {unknown}; it accepts: {accepted or 'none'}")


def load_preferences(
    source: Any,
    format: str = "trl",
    column_map: Mapping[str, str] | None = None,
    on_invalid: str = "raise",
    split: str | None = None,
    *,
    return_report: bool = False,
    **format_options: Any,
):
    """Load preference data into prefopt's canonical pairwise or K-wise schema.

    Args:
        source: a ``datasets.Dataset`` / ``DatasetDict``, a list of row dicts, a .json / .jsonl /
            .csv / .parquet path, or a ``{split: path}`` mapping.
        format: a registered format (`list_formats()`); it fixes the output schema.
        column_map: ``{source column: new name}`` applied before the adapter.
        on_invalid: "raise" (an `InvalidRowError` naming row, field and reason) or "drop" (drop the
            row, count it per reason, log a warning with the counts).
        split: pick one split of a DatasetDict / mapping source; returns a Dataset.
        return_report: also return the `ValidationReport` ({split: report} for a DatasetDict).
        format_options: passed to the adapter (e.g. ``rating="overall_score"`` for ultrafeedback).

    Returns:
        a Dataset (DatasetDict for a multi-split source), or ``(dataset, report)``.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {list(ON_INVALID)}, got {on_invalid!r}")
    get_format(format)  # an unknown name fails before any reading
    splits = _read_source(source, split, column_map)
    results, reports = {}, {}
    for name, rows in splits.items():
        dataset, report = _convert_split(_rename(rows, column_map), format, on_invalid, format_options)
        report.log(f"load_preferences(format={format!r}{'' if name is None else f', split={name!r}'})")
        results[name], reports[name] = dataset, report
    if list(results) == [None]:
        output, report_out = results[None], reports[None]
    else:
        output, report_out = datasets.DatasetDict(results), reports
    return (output, report_out) if return_report else output
