"""Every validation error, raised with row / field / reason, and counted per reason with on_invalid="drop"."""

import logging
import math

import pytest

from prefopt.data import REASONS, InvalidRowError, load_preferences

GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
USER = {"role": "user", "content": "Hi"}

# (format, bad row, field, reason) -- each row is broken in exactly one way
PAIRWISE_CASES = [
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing field"),
    ({"prompt": "q", "chosen": 4, "rejected": "b"}, "chosen", "not a string or a list of messages"),
    ({"prompt": "q", "chosen": "   ", "rejected": "b"}, "chosen", "empty text"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty text"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen", "chosen identical to rejected"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": "high", "score_rejected": 1}, "score_chosen", "score is not a number"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": math.nan, "score_rejected": 1}, "score_chosen", "score is NaN or infinite"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": math.inf}, "score_rejected", "score is NaN or infinite"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 2}, "score_chosen", "tied scores are not a preference"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": 2}, "score_chosen", "scores contradict the preference"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1}, "score_rejected", "missing field"),
    ({"prompt": [USER], "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "malformed message"),
    ({"prompt": [USER], "chosen": [USER], "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "malformed message"),
    ({"prompt": [USER], "chosen": [{"role": "assistant", "content": ""}], "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "empty text"),
    # a string prompt next to message lists is read as TRL's implicit-prompt form, which needs a shared user turn
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "prompt", "no shared prompt"),
    ({"chosen": "abc", "rejected": [{"role": "assistant", "content": "b"}]}, "rejected", "not a string or a list of messages"),
    ({"chosen": "abc", "rejected": "xyz"}, "prompt", "no shared prompt"),
]

KWISE_CASES = [
    ("ranked", {"prompt": "q", "completions": ["only one"]}, "completions", "fewer than 2 completions"),
    ("ranked", {"prompt": "q", "completions": "a, b"}, "completions", "not a list"),
    ("ranked", {"prompt": "q", "completions": ["a", "b", "a"]}, "completions", "duplicate completions"),
    ("ranked", {"prompt": "q", "completions": ["a", ""]}, "completions[1]", "empty text"),
    ("ranked", {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, 1, 2]}, "ranking", "ranking is not a permutation"),
    ("ranked", {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, 2, 3]}, "ranking", "ranking is not a permutation"),  # 1-based ranks, not indices
    ("ranked", {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [0, 1]}, "ranking", "mismatched list lengths"),
    ("ranked", {"prompt": "q", "completions": ["a", "b"], "scores": [1, 2]}, "scores", "scores not in best-first order"),
    ("ranked", {"prompt": "q", "completions": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]}, "prompt", "mixes standard and conversational forms"),
    ("scored", {"prompt": "q", "responses": ["a", "b"], "scores": [1.0]}, "scores", "mismatched list lengths"),
    # errors name the position in the source row, not the position after sorting by score
    ("scored", {"prompt": "q", "responses": ["a", " ", "c"], "scores": [1, 3, 2]}, "responses[1]", "empty text"),
    ("ranked", {"prompt": "q", "completions": ["a", "b", ""], "ranking": [2, 0, 1]}, "completions[2]", "empty text"),
    ("ultrafeedback", {"instruction": "q", "completions": [{"response": "a", "overall_score": 1}, {"response": 7, "overall_score": 2}]}, "completions[1].response", "not a string or a list of messages"),
    ("shp", {"history": "q", "human_ref_A": "", "human_ref_B": "b", "labels": 0}, "human_ref_A", "empty text"),
    ("scored", {"prompt": "q", "responses": ["a", "b"], "scores": [1.0, math.nan]}, "scores[1]", "score is NaN or infinite"),
    ("scored", {"prompt": "q", "responses": ["a", "b"]}, "scores", "missing field"),
    ("ultrafeedback", {"instruction": "q", "completions": [{"response": "a", "overall_score": 1}]}, "completions", "fewer than 2 completions"),
    ("ultrafeedback", {"instruction": "q", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]}, "completions[1].overall_score", "missing field"),
]


@pytest.mark.parametrize("bad, field, reason", PAIRWISE_CASES)
def test_pairwise_error_names_row_field_and_reason(bad, field, reason):
    with pytest.raises(InvalidRowError) as caught:
        load_preferences([GOOD, GOOD, bad], format="trl")
    error = caught.value
    assert (error.row, error.field, error.reason) == (2, field, reason)
    assert str(error).startswith(f"row 2, field {field!r}: {reason}")
    assert isinstance(error, ValueError) and reason in REASONS


@pytest.mark.parametrize("format, bad, field, reason", KWISE_CASES)
def test_kwise_error_names_row_field_and_reason(format, bad, field, reason):
    with pytest.raises(InvalidRowError) as caught:
        load_preferences([bad], format=format)
    assert (caught.value.row, caught.value.field, caught.value.reason) == (0, field, reason)


def test_mixing_standard_and_conversational_rows_is_an_error_naming_both_rows():
    conversational = {"prompt": [USER], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(InvalidRowError, match=r"row 1, field 'prompt': mixes standard and conversational forms \(this row is conversational, row 0 is standard\)"):
        load_preferences([GOOD, conversational])


def test_drop_returns_clean_rows_counts_per_reason_and_logs_a_warning(caplog):
    rows = [GOOD, {"prompt": "q", "chosen": "", "rejected": "b"}, {"prompt": "q", "chosen": "x", "rejected": "x"},
            {"prompt": "q", "chosen": " ", "rejected": "b"}, {"prompt": "2", "chosen": "a", "rejected": "b"}]
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        ds, report = load_preferences(rows, on_invalid="drop", return_report=True)
    assert ds.to_list() == [GOOD, {"prompt": "2", "chosen": "a", "rejected": "b"}]
    assert (report.total, report.kept, report.num_dropped) == (5, 2, 3)
    assert dict(report.dropped) == {"empty text": 2, "chosen identical to rejected": 1}
    assert report.examples[0] == "row 1, field 'chosen': empty text"
    assert "kept 2 of 5 rows" in caplog.text and "2 x 'empty text'" in caplog.text


def test_drop_everything_still_returns_the_canonical_columns():
    ds, report = load_preferences([{"prompt": "q", "chosen": "a", "rejected": "a"}], on_invalid="drop", return_report=True)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 0 and report.kept == 0


def test_clean_data_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        _, report = load_preferences([GOOD], return_report=True)
    assert caplog.text == "" and report.summary() == "kept 1 of 1 rows"


def test_on_invalid_must_be_raise_or_drop():
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        load_preferences([GOOD], on_invalid="ignore")
