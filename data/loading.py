"""`load_preferences`: read a source, map it through a format adapter, validate every row.

Sources are read row by row, never whole into Python objects: a JSON Lines, CSV or Parquet file
streams through the adapter and the checks in batches of `BATCH_ROWS` rows, and the canonical rows
are collected as Arrow tables (compact columnar memory, about the size of the text itself), so the
peak memory of a map-style load is about the size of the file, and ``streaming=True`` returns an
`datasets.IterableDataset` whose memory does not grow with the file at all. A ``.json`` file holding
one JSON array is parsed item by item from its text (that text is in memory; use JSON Lines for
files larger than memory).

Every error in a file names the file and the line (CSV: the line the record starts on; Parquet: the
row number), plus the row index for `InvalidRowError`.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import datasets
import pyarrow
from datasets.fingerprint import generate_random_fingerprint

from ._validation import (
    KWISE_COLUMNS,
    KWISE_SCORE_COLUMNS,
    MIXED_FORMS,
    MIXED_TYPES,
    PAIRWISE_COLUMNS,
    PAIRWISE_SCORE_COLUMNS,
    TIED_SCORES,
    InvalidRowError,
    ValidationReport,
    check_kwise_row,
    check_pairwise_row,
    value_kind,
)
from .formats import FormatSpec, get_format

ON_INVALID = ("raise", "drop")
TIED_SCORES_POLICIES = ("keep", "drop", "raise")
BATCH_ROWS = 1000  # rows held as Python objects at a time
_CHECKS = {"pairwise": check_pairwise_row, "kwise": check_kwise_row}
_COLUMNS = {"pairwise": (PAIRWISE_COLUMNS, PAIRWISE_SCORE_COLUMNS), "kwise": (KWISE_COLUMNS, KWISE_SCORE_COLUMNS)}
KWISE_TIE_NOTE = "K-wise row with tied scores kept (a ranking loss reads its order as strict)"

# (where, row): ``where`` is "file, line N" for a file source, None for rows already in memory.
Located = tuple[str | None, dict]


# --------------------------------------------------------------------------- reading files


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


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "null")


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        # A UTF-8 byte-order mark (Windows editors, Excel) is not part of the data: dropped, not an error.
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}, line {number}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})") from None


def _iter_json_lines(path: Path, hint: str = "") -> Iterator[Located]:
    with path.open("rb") as handle:  # bytes, so that a decoding error has its exact line
        for number, raw in enumerate(handle, start=1):
            line = _decode_line(raw, path, number)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}){hint}") from None
            if not isinstance(value, dict):
                raise ValueError(f"{path}, line {number}: a row must be a JSON object {{...}}, got {_json_kind(value)}")
            yield f"{path}, line {number}", value


def _iter_json_array(path: Path, text: str) -> Iterator[Located]:
    """The items of a JSON array, decoded one at a time, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def skip_space(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    def line_at(at: int) -> int:
        return 1 + text.count("\n", 0, at)

    position = skip_space(text.index("[") + 1)
    if position < len(text) and text[position] == "]":
        return
    item, line, counted_to = 0, 1, 0
    while position < len(text):
        line, counted_to = line + text.count("\n", counted_to, position), position
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}, line {line}: item {item} of the array must be a JSON object {{...}}, got {_json_kind(value)}")
        yield f"{path}, line {line}", value
        item += 1
        position = skip_space(end)
        if position < len(text) and text[position] == ",":
            position = skip_space(position + 1)
        elif position < len(text) and text[position] == "]":
            if skip_space(position + 1) != len(text):
                raise ValueError(f"{path}, line {line_at(position + 1)}: not valid JSON (text after the closing ']')")
            return
        else:
            raise ValueError(f"{path}, line {line_at(position)}: not valid JSON (expected ',' or ']' after item {item - 1})")
    raise ValueError(f"{path}: not valid JSON (the array is not closed)")


def _iter_json(path: Path) -> Iterator[Located]:
    """A .json file: one array of row objects, or JSON Lines under a .json name (as the Hub often has)."""
    with path.open("rb") as handle:
        start = handle.read(64).decode("utf-8-sig", errors="replace").lstrip()
    if not start.startswith("["):
        yield from _iter_json_lines(path, hint="; a .json source holds one array of row objects, or JSON Lines")
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        number = 1 + raw.count(b"\n", 0, error.start)
        raise ValueError(f"{path}, line {number}: not UTF-8 text (byte {raw[error.start]:#04x})") from None
    del raw
    yield from _iter_json_array(path, text)


def _iter_csv(path: Path, column_map: Mapping[str, str]) -> Iterator[Located]:
    import csv

    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates or not all(name.strip() for name in header):
                raise ValueError(f"{path}, line 1: the header must name every column once; got {header}")
            numeric = {c for c in header if c in CSV_NUMERIC_COLUMNS or column_map.get(c) in CSV_NUMERIC_COLUMNS}
            last_line = reader.line_num
            for cells in reader:
                start, last_line = last_line + 1, reader.line_num  # a quoted cell may span lines
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    raise ValueError(
                        f"{path}, line {start}: {len(cells)} cell(s), but the header has {len(header)} ({', '.join(header)})"
                    )
                yield f"{path}, line {start}", {k: _csv_number(v) if k in numeric else v for k, v in zip(header, cells)}
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}, after line {reader.line_num}: not UTF-8 text ({error.reason})") from None
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({error})") from None


def _iter_parquet(path: Path) -> Iterator[Located]:
    import pyarrow.parquet

    index = 0
    for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{path}, row {index}", row
            index += 1


def _iter_file(path: Path, column_map: Mapping[str, str] | None = None) -> Iterator[Located]:
    """The rows of a .jsonl / .json / .csv / .parquet file, one at a time; an empty file is an error."""
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[], Iterator[Located]]] = {
        ".jsonl": lambda: _iter_json_lines(path),
        ".json": lambda: _iter_json(path),
        ".csv": lambda: _iter_csv(path, column_map or {}),
        ".parquet": lambda: _iter_parquet(path),
    }
    if suffix not in readers:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv or .parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    empty = True
    for located in readers[suffix]():
        empty = False
        yield located
    if empty:
        raise ValueError(f"{path}: the file holds no rows" + (" (only a header)" if suffix == ".csv" and path.stat().st_size else ""))


def _read_file(path: Path, column_map: Mapping[str, str] | None = None) -> list[dict]:
    """All rows of a file as dicts (for small files and tests; `load_preferences` streams instead)."""
    return [row for _, row in _iter_file(Path(path), column_map)]


# --------------------------------------------------------------------------- sources


RowSource = Callable[[], Iterator[Located]]  # called again for each pass (streaming datasets re-iterate)


def _in_memory(rows: Iterable[dict]) -> RowSource:
    return lambda: ((None, dict(row)) for row in rows)


def _read_source(source: Any, split: str | None, column_map: Mapping[str, str] | None = None) -> dict[str | None, RowSource]:
    """{split name: a function that iterates its rows}; the key None means "a single dataset, not a DatasetDict"."""
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
        if isinstance(source, datasets.DatasetDict):
            read = lambda value: _in_memory(value)  # noqa: E731  (iterating a Dataset reads it batch by batch)
        else:
            read = lambda value: (lambda: _iter_file(Path(value), column_map))  # noqa: E731
        sources = {name: read(source[name]) for name in names}
        return {None: sources[split]} if split is not None else sources
    if split is not None:
        raise ValueError("split= selects a split of a DatasetDict or of a {split: path} mapping; this source has no splits")
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return {None: _in_memory(source)}
    if isinstance(source, (str, os.PathLike)):
        return {None: lambda: _iter_file(Path(source), column_map)}
    if isinstance(source, list):
        if not all(isinstance(row, Mapping) for row in source):
            raise TypeError("a list source must hold dicts (one per row)")
        return {None: _in_memory(source)}
    raise TypeError(
        f"source must be a datasets.Dataset / DatasetDict, a list of dicts, a file path or a {{split: path}} mapping; got {type(source).__name__}"
    )


# --------------------------------------------------------------------------- mapping and validation


class _Converter:
    """Maps source rows to canonical rows one at a time, keeping what whole-split checks need:
    the form of the first row (one dataset is all standard or all conversational) and the kind of
    value each pass-through column holds (an Arrow column has one type)."""

    def __init__(self, format: str, on_invalid: str, options: dict, column_map: Mapping[str, str] | None, tied_scores: str):
        self.format, self.on_invalid, self.options, self.tied_scores = format, on_invalid, options, tied_scores
        self.column_map = dict(column_map or {})
        self.spec: FormatSpec | None = None
        self.report = ValidationReport()
        self.first_form: tuple[int, str] | None = None
        self.column_kinds: dict[str, tuple[str, str]] = {}  # column -> (kind, where it was first seen)

    def _start(self, row: dict) -> None:
        """Checks that need one row: the column map and the dispatch of a format to its adapter."""
        missing = [name for name in self.column_map if name not in row]
        if missing:
            raise ValueError(f"column_map names column(s) {missing} that the source does not have; it has {sorted(row)}")
        renamed = self._rename(row, None)
        self.spec = get_format(self.format).resolve(set(renamed))
        _check_options(self.spec, self.options)
        self.check = _CHECKS[self.spec.schema]
        self.required, self.score_columns = _COLUMNS[self.spec.schema]

    def _rename(self, row: dict, where: str | None) -> dict:
        if not self.column_map:
            return row
        clashes = sorted(target for target in self.column_map.values() if target in row and target not in self.column_map)
        if clashes:
            raise ValueError(f"{where + ': ' if where else ''}column_map would overwrite existing column(s) {clashes}; map or drop them first")
        return {self.column_map.get(key, key): value for key, value in row.items()}

    def convert(self, index: int, where: str | None, row: dict) -> dict | None:
        """The canonical row, or None when it was dropped (``on_invalid="drop"``, counted in the report)."""
        if self.spec is None:
            self._start(row)
        self.report.total += 1
        row = self._rename(row, where)
        try:
            canonical = self.spec.adapter(row, **self.options)
            form = self.check(canonical)
            # Arrow columns have one type, and TRL treats a dataset as all-standard or all-conversational.
            if self.first_form is None:
                self.first_form = (index, form)
            elif form != self.first_form[1]:
                raise InvalidRowError(None, "prompt", MIXED_FORMS, f"this row is {form}, row {self.first_form[0]} is {self.first_form[1]}")
            self._check_ties(canonical)
            passthrough = {k: v for k, v in row.items() if k not in self.spec.consumes and k not in canonical}
            self._check_kinds(passthrough, where or f"row {index}")
        except InvalidRowError as error:
            error = error.at_row(index, where)
            if self.on_invalid == "raise":
                raise error from None
            self.report.record(error)
            return None
        self.report.kept += 1
        return {**canonical, **passthrough}

    def _check_ties(self, canonical: dict) -> None:
        scores = canonical.get("scores")
        if self.spec.schema != "kwise" or scores is None or len(set(scores)) == len(scores):
            return
        if self.tied_scores == "keep":
            self.report.notes[KWISE_TIE_NOTE] += 1
        else:  # "drop" / "raise": the row is invalid, and on_invalid decides, as for any other reason
            tied = sorted({score for score in scores if scores.count(score) > 1})
            raise InvalidRowError(None, "scores", TIED_SCORES, f"tied score(s) {tied}; tied_scores={self.tied_scores!r}")

    def _check_kinds(self, passthrough: dict, where: str) -> None:
        for column, value in passthrough.items():
            kind = value_kind(value)
            if kind is None:
                continue
            first = self.column_kinds.setdefault(column, (kind, where))
            if first[0] != kind:
                raise InvalidRowError(None, column, MIXED_TYPES, f"{kind} here, {first[0]} at {first[1]}")


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


def _canonical_rows(rows: RowSource, converter: _Converter) -> Iterator[dict]:
    for index, (where, row) in enumerate(rows()):
        canonical = converter.convert(index, where, row)
        if canonical is not None:
            yield canonical


def _batch_table(batch: list[dict]) -> pyarrow.Table:
    names = list(dict.fromkeys(name for row in batch for name in row))
    return pyarrow.table({name: pyarrow.array([row.get(name) for row in batch]) for name in names})


def _build_dataset(rows: Iterator[dict], converter: _Converter) -> datasets.Dataset:
    """Canonical rows -> one Arrow-backed Dataset, holding at most `BATCH_ROWS` rows as Python objects."""
    tables, batch = [], []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            tables.append(_batch_table(batch))
            batch = []
    if batch:
        tables.append(_batch_table(batch))
    if converter.spec is not None:
        required, score_columns = converter.required, converter.score_columns
    else:  # no rows at all: the columns of the format's schema (a dispatcher's depends on rows; pairwise then)
        required, score_columns = _COLUMNS[get_format(converter.format).schema or "pairwise"]
    if not tables:
        return datasets.Dataset.from_dict({name: [] for name in required})
    table = pyarrow.concat_tables(tables, promote_options="permissive")
    present = set(table.column_names)
    scores = [c for c in score_columns if c in present and table[c].null_count < len(table)]
    extra = [c for c in table.column_names if c not in required and c not in score_columns]
    table = table.select([*required, *scores, *extra])
    # An explicit fingerprint: without one, Dataset() hashes the whole table by serialising it, a
    # transient copy that made the peak 4x the table's size. An in-memory table caches no map() results.
    return datasets.Dataset(table, fingerprint=generate_random_fingerprint())


def _streaming_dataset(rows: RowSource, make_converter: Callable[[], _Converter], what: str) -> datasets.IterableDataset:
    from datasets.iterable_dataset import ExamplesIterable

    def generate():
        converter = make_converter()  # each pass starts afresh, so the report counts one pass
        yield from enumerate(_canonical_rows(rows, converter))
        converter.report.log(what)

    # Built on ExamplesIterable directly: IterableDataset.from_generator sets up a dataset builder
    # (seconds, and ~150 MB) to hash the generator, which a lazily read local file does not need.
    return datasets.IterableDataset(ExamplesIterable(generate, {}))


def load_preferences(
    source: Any,
    format: str = "trl",
    column_map: Mapping[str, str] | None = None,
    on_invalid: str = "raise",
    split: str | None = None,
    *,
    return_report: bool = False,
    streaming: bool = False,
    tied_scores: str = "keep",
    **format_options: Any,
):
    """Load preference data into prefopt's canonical pairwise or K-wise schema.

    Args:
        source: a ``datasets.Dataset`` / ``DatasetDict``, a list of row dicts, a .json / .jsonl /
            .csv / .parquet path, or a ``{split: path}`` mapping.
        format: a registered format (`list_formats()`); it fixes the output schema.
        column_map: ``{source column: new name}`` applied before the adapter.
        on_invalid: "raise" (an `InvalidRowError` naming file, line, row, field and reason) or "drop"
            (drop the row, count it per reason, log a warning with the counts).
        split: pick one split of a DatasetDict / mapping source; returns a Dataset.
        return_report: also return the `ValidationReport` ({split: report} for a DatasetDict).
        streaming: return an `IterableDataset` (per split) that reads, maps and checks rows as it is
            iterated, in memory that does not grow with the source; errors surface during iteration
            and the report is logged at the end of each pass (``return_report`` is not available).
        tied_scores: K-wise rows whose scores tie. "keep" (default; counted in ``report.notes``,
            since a ranking loss reads the best-first order as strict), "drop" or "raise" (the row is
            invalid with reason ``tied scores are not a preference``, and ``on_invalid`` decides).
            Pairwise rows with tied scores are always invalid.
        format_options: passed to the adapter (e.g. ``rating="overall_score"`` for ultrafeedback).

    Returns:
        a Dataset (DatasetDict for a multi-split source), or ``(dataset, report)``.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {list(ON_INVALID)}, got {on_invalid!r}")
    if tied_scores not in TIED_SCORES_POLICIES:
        raise ValueError(f"tied_scores must be one of {list(TIED_SCORES_POLICIES)}, got {tied_scores!r}")
    if streaming and return_report:
        raise ValueError("return_report needs the whole source read; with streaming=True the report is logged after each pass")
    get_format(format)  # an unknown name fails before any reading
    sources = _read_source(source, split, column_map)
    results, reports = {}, {}
    for name, rows in sources.items():
        what = f"load_preferences(format={format!r}{'' if name is None else f', split={name!r}'})"
        make_converter = lambda: _Converter(format, on_invalid, format_options, column_map, tied_scores)  # noqa: E731
        if streaming:
            results[name] = _streaming_dataset(rows, make_converter, what)
            continue
        converter = make_converter()
        results[name] = _build_dataset(_canonical_rows(rows, converter), converter)
        converter.report.log(what)
        reports[name] = converter.report
    if list(results) == [None]:
        output, report_out = results[None], reports.get(None)
    else:
        output = (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)(results)
        report_out = reports
    return (output, report_out) if return_report else output
