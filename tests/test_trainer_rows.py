"""Every row is checked before training, not the first: later rows missing a field value, mixed layouts and
empty or all-too-long datasets are refused with the rows named (no bare StopIteration or num_samples=0)."""

import pytest
from datasets import Dataset, IterableDataset

from helpers_trainer import config_kwargs, make_model, make_tokenizer
from prefopt import PrefOptConfig, Trainer


def _trainer(tmp_path, rows_or_dataset, loss="dpo", **overrides):
    dataset = rows_or_dataset if not isinstance(rows_or_dataset, list) else Dataset.from_list(rows_or_dataset)
    args = PrefOptConfig(loss=loss, **config_kwargs(tmp_path, **overrides))
    return Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(), args=args)


def _pair(i, **extra):
    return {"prompt": "say", "chosen": f" good {i}", "rejected": f" bad {i}", **extra}


def test_a_later_row_without_scores_is_named(tmp_path):
    rows = [_pair(i, score_chosen=1.0, score_rejected=0.0) for i in range(6)]
    rows[3]["score_chosen"] = None
    rows[5]["score_rejected"] = float("nan")
    with pytest.raises(ValueError, match=r"2 of 6 rows .*\n  rows \[3\]: .*'score_chosen', which holds None"):
        _trainer(tmp_path, rows, loss="cdr")


def test_mixed_layouts_are_refused_with_their_rows(tmp_path):
    rows = [{**_pair(i), "completions": None} for i in range(5)]
    rows[2] = {"prompt": "say", "chosen": None, "rejected": None, "completions": [" a", " b", " c"]}
    with pytest.raises(ValueError, match=r"rows \[2\]: the row has K-wise `completions`, the first row pairwise"):
        _trainer(tmp_path, rows)


def test_an_empty_dataset_is_refused(tmp_path):
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match="the train dataset has 0 rows"):
        _trainer(tmp_path, empty)
    streamed = IterableDataset.from_generator(lambda: iter(()), features=empty.features)
    with pytest.raises(ValueError, match="the train dataset has 0 rows"):
        _trainer(tmp_path, streamed)


def test_an_all_too_long_dataset_is_refused(tmp_path):
    rows = [{"prompt": "say " * 40, "chosen": " good", "rejected": " bad"} for _ in range(4)]
    with pytest.raises(ValueError, match=r"all 4 rows were dropped because the prompt alone fills max_length=8"):
        _trainer(tmp_path, rows, max_length=8)


def test_an_iterable_dataset_is_checked_row_by_row_as_it_streams(tmp_path):
    rows = [_pair(i, score_chosen=1.0, score_rejected=0.0) for i in range(8)]
    rows[6]["score_chosen"] = None
    streamed = IterableDataset.from_generator(lambda: iter(rows), features=Dataset.from_list(rows).features)
    trainer = _trainer(tmp_path, streamed, loss="cdr", max_steps=2)
    with pytest.raises(ValueError, match=r"train dataset, row 6: .*'score_chosen', which holds None"):
        trainer.train()


# --- truncation is counted per reason; a pair that truncation makes identical is dropped, not trained ---

from prefopt.training.batching import truncation_reasons  # noqa: E402


@pytest.mark.parametrize(
    "prompt, responses, mode, expected",
    [
        ([1, 2], [[3], [4]], "keep_start", set()),
        ([1, 2], [[3, 3, 3], [4]], "keep_start", {"response cut"}),
        ([1, 2], [[3, 3, 5], [3, 3, 6]], "keep_start", {"response cut", "responses identical after truncation"}),
        ([1, 2], [[3, 3, 5], [3, 3, 6]], "keep_end", {"prompt cut"}),
        ([1, 2], [[7, 3, 3, 3, 3], [8, 3, 3, 3, 3]], "keep_end", {"prompt cut", "response cut", "responses identical after truncation"}),
        ([1, 2], [[3, 3, 3], [3, 3, 3]], "keep_start", {"response cut"}),  # identical before truncation: not truncation's doing
    ],
)
def test_truncation_reasons_by_hand(prompt, responses, mode, expected):
    row = {"prompt_ids": prompt, "completions_ids": responses} if len(responses) > 2 else {
        "prompt_ids": prompt, "chosen_ids": responses[0], "rejected_ids": responses[1]}
    assert truncation_reasons(row, 4, mode) == expected
    assert truncation_reasons({"prompt_ids": prompt, "completions_ids": responses}, 4, mode) == expected


def _shared_prefix_rows():
    long = " same" * 12
    return [
        {"prompt": "say", "chosen": long + " good", "rejected": long + " bad"},  # identical once cut
        {"prompt": "say", "chosen": " good", "rejected": " bad"},  # untouched
        {"prompt": "say", "chosen": " good" * 20, "rejected": " bad"},  # chosen cut, still different
    ]


def test_rows_made_identical_by_truncation_are_dropped_and_counted(tmp_path, caplog):
    trainer = _trainer(tmp_path, _shared_prefix_rows() * 2, max_length=12, max_steps=1)
    assert len(trainer.train_dataset) == 4
    assert trainer.truncated_rows["train"] == {
        "prompt cut": 0, "response cut": 4, "responses identical after truncation": 2}
    assert "rows whose responses become identical are dropped" in caplog.text
    summary = {row[1]: row[2] for row in trainer.summary().rows}
    assert summary["train rows: responses identical after truncation"] == 2
    trainer.train()


def test_iterable_rows_are_counted_and_filtered_as_they_stream(tmp_path):
    rows = _shared_prefix_rows() * 4
    streamed = IterableDataset.from_generator(lambda: iter(rows), features=Dataset.from_list(rows).features)
    trainer = _trainer(tmp_path, streamed, max_length=12, max_steps=2, per_device_train_batch_size=2)
    trainer.train()
    counts = trainer.truncated_rows["train"]
    assert counts["responses identical after truncation"] >= 2 and counts["response cut"] >= 4


@pytest.mark.parametrize("row, kwise", [
    ({"prompt": "say", "completions": [" good", " bad"]}, True),
    ({"prompt": "say", "completions_ids": [[1], [2]]}, True),
    ({"prompt": "say", "completions": None, "chosen": " good", "rejected": " bad"}, False),  # a None cell is no ranking
    ({"prompt": "say", "chosen": " good", "rejected": " bad"}, False),
])
def test_one_kwise_test_for_the_trainer_collator_fields_and_summary(row, kwise):
    from prefopt.training import batching, fields, rows, summary

    assert rows.is_kwise_example(row) is kwise
    for module in (batching, fields):  # every caller asks the same function
        assert module.is_kwise_example is rows.is_kwise_example
    assert summary.truncation_reasons is batching.truncation_reasons
