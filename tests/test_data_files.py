"""load_preferences on files: BOM, empty files, non-object lines, ragged CSV, mixed column types, bad
UTF-8, HH transcripts ending on a human turn, tied K-wise scores, streaming. Errors name file and line."""

import json

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefopt.data import InvalidRowError, load_preferences
from prefopt.data._validation import MIXED_TYPES, TIED_SCORES

ROWS = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def _csv(rows):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


WRITERS = {"jsonl": _jsonl, "json": json.dumps, "csv": _csv}


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_a_utf8_byte_order_mark_is_not_data(tmp_path, suffix):
    path = tmp_path / f"rows.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + WRITERS[suffix](ROWS).encode())
    assert load_preferences(path).to_list() == ROWS


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.json", "[]"), ("empty.csv", ""),
    ("header_only.csv", "prompt,chosen,rejected\n"), ("bom_only.jsonl", "\ufeff"),
])
def test_a_file_without_rows_is_an_error_naming_it(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{name}: the file holds no rows"):
        load_preferences(tmp_path / name)


def test_an_empty_parquet_file_is_an_error(tmp_path):
    datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="empty.parquet: the file holds no rows"):
        load_preferences(tmp_path / "empty.parquet")


json_non_objects = st.one_of(
    st.lists(st.integers(), max_size=3), st.text(max_size=5), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()
)


@FUZZ
@given(value=json_non_objects, position=st.integers(min_value=0, max_value=4), blank_lines=st.integers(0, 2))
def test_a_jsonl_line_that_is_not_an_object_names_its_line(tmp_path, value, position, blank_lines):
    lines = [json.dumps(row) for row in ROWS * 2] + ["" for _ in range(blank_lines)]
    lines.insert(position, json.dumps(value))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"rows.jsonl, line {position + 1}: a row must be a JSON object"):
        load_preferences(tmp_path / "rows.jsonl")


@FUZZ
@given(broken=st.sampled_from(['{"prompt": "q"', "{'prompt': 'q'}", "prompt,chosen", '{"a": 1}}', "[1, 2"]),
       position=st.integers(min_value=0, max_value=4))
def test_a_jsonl_line_that_is_not_json_names_its_line(tmp_path, broken, position):
    lines = [json.dumps(row) for row in ROWS * 2]
    lines.insert(position, broken)
    (tmp_path / "rows.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"rows.jsonl, line {position + 1}: not valid JSON"):
        load_preferences(tmp_path / "rows.jsonl")


def test_a_json_array_item_that_is_not_an_object_names_its_line(tmp_path):
    (tmp_path / "rows.json").write_text('[\n  {"prompt": "q", "chosen": "a", "rejected": "b"},\n  ["q", "a", "b"]\n]\n')
    with pytest.raises(ValueError, match=r"rows.json, line 3: item 1 of the array must be a JSON object"):
        load_preferences(tmp_path / "rows.json")
    (tmp_path / "pretty.json").write_text(json.dumps(ROWS + [{"prompt": "q", "chosen": "a", "rejected": "a"}], indent=2))
    with pytest.raises(InvalidRowError, match=r"pretty.json, line 12 \(row 2\), field 'chosen': chosen identical"):
        load_preferences(tmp_path / "pretty.json")
    (tmp_path / "object.json").write_text('{\n"prompt": "q"\n}')
    with pytest.raises(ValueError, match=r"object.json, line 1: not valid JSON .*one array of row objects, or JSON Lines"):
        load_preferences(tmp_path / "object.json")


@FUZZ
@given(cells=st.integers(min_value=1, max_value=6).filter(lambda n: n != 3), position=st.integers(min_value=0, max_value=3))
def test_a_csv_row_with_the_wrong_number_of_cells_names_its_line(tmp_path, cells, position):
    lines = ["a,b,c"] * 4
    lines.insert(position, ",".join(f"x{i}" for i in range(cells)))
    (tmp_path / "rows.csv").write_text("prompt,chosen,rejected\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"rows.csv, line {position + 2}: {cells} cell\(s\), but the header has 3"):
        load_preferences(tmp_path / "rows.csv")


def test_csv_line_numbers_count_quoted_newlines(tmp_path):
    (tmp_path / "rows.csv").write_text('prompt,chosen,rejected\n"two\nlines",a,b\nq,a,a\n')
    with pytest.raises(InvalidRowError, match=r"rows.csv, line 4 \(row 1\), field 'chosen'"):
        load_preferences(tmp_path / "rows.csv")


def test_mixed_types_in_one_column_name_both_places_and_drop_counts_them(tmp_path):
    rows = [{**ROWS[0], "id": 1}, {**ROWS[1], "id": 2}, {**ROWS[0], "id": "three"}, {**ROWS[1], "id": [4]}]
    (tmp_path / "rows.jsonl").write_text(_jsonl(rows))
    with pytest.raises(InvalidRowError, match=r"rows.jsonl, line 3 \(row 2\), field 'id': column holds values of another "
                                              r"type \(string here, number at .*rows.jsonl, line 1\)"):
        load_preferences(tmp_path / "rows.jsonl")
    dataset, report = load_preferences(tmp_path / "rows.jsonl", on_invalid="drop", return_report=True)
    assert dataset["id"] == [1, 2] and report.dropped == {MIXED_TYPES: 2}
    assert load_preferences([{**ROWS[0], "id": 1}, {**ROWS[1], "id": 2.5}])["id"] == [1.0, 2.5]  # numbers widen


def test_invalid_utf8_names_its_line(tmp_path):
    (tmp_path / "rows.jsonl").write_bytes(_jsonl(ROWS).encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 3: not UTF-8 text \(byte 0xe9"):
        load_preferences(tmp_path / "rows.jsonl")


def test_an_hh_transcript_ending_on_a_human_turn_is_refused():
    ends_on_human = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?"
    row = {"chosen": ends_on_human, "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    with pytest.raises(InvalidRowError, match=r"field 'chosen': unparseable transcript \(it ends on a Human turn"):
        load_preferences([row], format="hh")


def test_a_conversational_completion_ending_on_a_user_message_is_refused():
    row = {"prompt": [{"role": "user", "content": "hi"}],
           "chosen": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "thanks"}],
           "rejected": [{"role": "assistant", "content": "go away"}]}
    with pytest.raises(InvalidRowError, match="a completion must end with an assistant message, got 'user'"):
        load_preferences([row])


def test_mixed_standard_and_conversational_rows_are_refused():
    conversational = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                      "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(InvalidRowError, match="row 1, field 'prompt': mixes standard and conversational forms"):
        load_preferences([ROWS[0], conversational])


SCORED = [{"prompt": "q", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 0.5]},
          {"prompt": "r", "responses": ["a", "b", "c"], "scores": [3.0, 2.0, 1.0]}]


def test_tied_kwise_scores_are_kept_and_counted_or_refused_on_request():
    dataset, report = load_preferences(SCORED, format="scored", return_report=True)
    assert len(dataset) == 2 and sum(report.notes.values()) == 1
    with pytest.raises(InvalidRowError, match=r"row 0, field 'scores': tied scores are not a preference \(tied score\(s\) \[0.5\]"):
        load_preferences(SCORED, format="scored", tied_scores="raise")
    dataset, report = load_preferences(SCORED, format="scored", tied_scores="drop", on_invalid="drop", return_report=True)
    assert dataset["prompt"] == ["r"] and report.dropped == {TIED_SCORES: 1}
    with pytest.raises(ValueError, match="tied_scores must be one of"):
        load_preferences(SCORED, format="scored", tied_scores="ignore")


# Text a user might have in a cell: commas, quotes, newlines, unicode; never blank (blank text is invalid).
cell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20).filter(
    lambda text: text.strip() != "" and text == text.strip()
)
pair_rows = st.lists(
    st.tuples(cell_text, cell_text, cell_text).filter(lambda t: t[1] != t[2]).map(
        lambda t: {"prompt": t[0], "chosen": t[1], "rejected": t[2]}
    ),
    min_size=1, max_size=6,
)


@FUZZ
@given(rows=pair_rows, suffix=st.sampled_from(["jsonl", "json", "csv", "parquet"]), bom=st.booleans())
def test_every_file_type_reads_back_the_rows_a_list_gives(tmp_path, rows, suffix, bom):
    path = tmp_path / f"rows.{suffix}"
    if suffix == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + WRITERS[suffix](rows).encode())
    assert load_preferences(path).to_list() == load_preferences(rows).to_list() == rows
    assert list(load_preferences(path, streaming=True)) == rows


def test_streaming_reads_lazily_and_reports_errors_with_their_line(tmp_path, caplog):
    (tmp_path / "rows.jsonl").write_text(_jsonl(ROWS + [{"prompt": "q", "chosen": "a", "rejected": "a"}] + ROWS))
    stream = load_preferences(tmp_path / "rows.jsonl", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    iterator = iter(stream)
    assert [next(iterator), next(iterator)] == ROWS  # the bad row on line 3 is not read yet
    with pytest.raises(InvalidRowError, match=r"rows.jsonl, line 3 \(row 2\)"):
        next(iterator)
    assert list(load_preferences(tmp_path / "rows.jsonl", streaming=True, on_invalid="drop")) == ROWS + ROWS
    assert any("kept 4 of 5 rows" in record.getMessage() for record in caplog.records)
    with pytest.raises(ValueError, match="return_report needs the whole source"):
        load_preferences(tmp_path / "rows.jsonl", streaming=True, return_report=True)


def test_dropped_rows_from_a_file_are_reported_with_their_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text(_jsonl(ROWS + [{"prompt": "q", "chosen": "", "rejected": "a"}]))
    _, report = load_preferences(tmp_path / "rows.jsonl", on_invalid="drop", return_report=True)
    assert report.kept == 2 and report.examples[0].endswith("rows.jsonl, line 3 (row 2), field 'chosen': empty text")
