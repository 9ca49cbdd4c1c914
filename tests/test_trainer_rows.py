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
