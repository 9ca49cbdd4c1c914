"""to_pairs strategies on a hand-worked ranking, the tie rule, and scores travelling with the pairs."""

import logging

import datasets
import pytest

from prefopt.data import STRATEGIES, InvalidRowError, load_preferences, to_pairs

# A > B = C > D by score: the B/C tie must never become a pair.
SCORED = load_preferences(
    [{"prompt": "p", "responses": ["C", "A", "D", "B"], "scores": [3, 4, 1, 3], "id": "r0"}], format="scored"
)


def pairs_of(dataset):
    return [(row["chosen"], row["rejected"]) for row in dataset]


def test_the_fixture_is_sorted_best_first_with_ties_in_source_order():
    assert SCORED[0]["completions"] == ["A", "C", "B", "D"] and SCORED[0]["scores"] == [4, 3, 3, 1]


@pytest.mark.parametrize(
    "strategy, expected, ties",
    [
        ("all_pairs", [("A", "C"), ("A", "B"), ("A", "D"), ("C", "D"), ("B", "D")], 1),  # (C, B) tied
        ("best_vs_rest", [("A", "C"), ("A", "B"), ("A", "D")], 0),
        ("best_vs_worst", [("A", "D")], 0),
        ("adjacent", [("A", "C"), ("B", "D")], 1),  # (C, B) tied
    ],
)
def test_deterministic_strategies_on_a_hand_worked_ranking(strategy, expected, ties):
    pairs, report = to_pairs(SCORED, strategy, return_report=True)
    assert pairs_of(pairs) == expected
    assert report.notes.get("tied pair skipped", 0) == ties and (report.kept, report.pairs) == (1, len(expected))


def test_scores_and_other_columns_travel_with_each_pair():
    pairs = to_pairs(SCORED, "best_vs_worst")
    assert pairs.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "id"]
    assert pairs[0] == {"prompt": "p", "chosen": "A", "rejected": "D", "score_chosen": 4.0, "score_rejected": 1.0, "id": "r0"}


def test_without_scores_rank_order_alone_defines_the_preference():
    ranked = load_preferences([{"prompt": "p", "completions": ["first", "second", "third"]}], format="ranked")
    pairs = to_pairs(ranked, "all_pairs")
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs_of(pairs) == [("first", "second"), ("first", "third"), ("second", "third")]


def test_best_vs_random_is_seeded_and_never_draws_a_tie():
    rows = [{"prompt": f"p{i}", "responses": ["best", "tied", "x", "y"], "scores": [5, 5, 2, 1]} for i in range(40)]
    ranked = load_preferences(rows, format="scored")
    first, again, other = (to_pairs(ranked, "best_vs_random", seed=s) for s in (0, 0, 1))
    assert pairs_of(first) == pairs_of(again)
    assert pairs_of(first) != pairs_of(other)
    rejected = {r for _, r in pairs_of(first)}
    assert rejected == {"x", "y"}  # drawn only among completions scored strictly below the best


def test_a_row_whose_completions_all_tie_yields_no_pair_and_is_reported(caplog):
    ranked = load_preferences([{"prompt": "p", "responses": ["a", "b"], "scores": [1, 1]}], format="scored")
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        pairs, report = to_pairs(ranked, "best_vs_random", return_report=True)
    assert len(pairs) == 0 and report.notes["row with no untied pair skipped"] == 1
    assert report.summary() == "kept 0 of 1 rows, made 0 pairs; 1 x row with no untied pair skipped"
    assert "row with no untied pair skipped" in caplog.text


def test_datasetdict_is_converted_split_by_split():
    dd = datasets.DatasetDict({"train": SCORED, "test": SCORED})
    pairs = to_pairs(dd, "best_vs_rest")
    assert {k: len(v) for k, v in pairs.items()} == {"train": 3, "test": 3}


def test_unknown_strategy_non_kwise_data_and_invalid_rows_raise():
    assert sorted(STRATEGIES) == ["adjacent", "all_pairs", "best_vs_random", "best_vs_rest", "best_vs_worst"]
    with pytest.raises(ValueError, match="unknown pair strategy 'random'.*all_pairs"):
        to_pairs(SCORED, "random")
    with pytest.raises(ValueError, match="needs K-wise columns"):
        to_pairs(datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    broken = datasets.Dataset.from_list([{"prompt": "p", "completions": ["a", "b"]}, {"prompt": "p", "completions": ["a"]}])
    with pytest.raises(InvalidRowError, match=r"row 1, field 'completions': fewer than 2 completions"):
        to_pairs(broken)
