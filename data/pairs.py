"""`to_pairs`: turn K-wise rows (completions best first, optional scores) into pairwise rows.

Tie rule: when a row has scores, two completions with equal scores are never made into a pair,
in any strategy; such pairs are skipped and counted in the report ("tied pair skipped"). Without
scores, the rank order alone defines the preference (earlier is better), so there are no ties.
Scores travel with the pairs as ``score_chosen`` / ``score_rejected`` (for soft-label losses).
"""

from __future__ import annotations

import random
from typing import Callable

import datasets

from ._validation import KWISE_COLUMNS, KWISE_SCORE_COLUMNS, InvalidRowError, ValidationReport, check_kwise_row

TIED = "tied pair skipped"
NO_PAIR = "row with no untied pair skipped"


def _all_pairs(k: int, rng: random.Random, untied: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def _best_vs_rest(k, rng, untied):
    return [(0, j) for j in range(1, k)]


def _best_vs_worst(k, rng, untied):
    return [(0, k - 1)]


def _adjacent(k, rng, untied):
    return [(i, i + 1) for i in range(k - 1)]


def _best_vs_random(k, rng, untied):
    # Draw only among completions strictly worse than the best, so a tie never wastes the row.
    candidates = [j for j in range(1, k) if untied(0, j)]
    return [(0, rng.choice(candidates))] if candidates else []


STRATEGIES: dict[str, Callable] = {
    "all_pairs": _all_pairs,
    "best_vs_rest": _best_vs_rest,
    "best_vs_worst": _best_vs_worst,
    "adjacent": _adjacent,
    "best_vs_random": _best_vs_random,
}


def _split_to_pairs(dataset: datasets.Dataset, strategy: str, seed: int) -> tuple[datasets.Dataset, ValidationReport]:
    missing = [c for c in KWISE_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"to_pairs needs K-wise columns {list(KWISE_COLUMNS)}; missing {missing} (load with a K-wise format)")
    make_pairs = STRATEGIES[strategy]
    has_scores = "scores" in dataset.column_names
    passthrough = [c for c in dataset.column_names if c not in KWISE_COLUMNS + KWISE_SCORE_COLUMNS]
    report = ValidationReport(total=len(dataset))
    pairs: list[dict] = []
    for index, row in enumerate(dataset):
        try:
            check_kwise_row(row)
        except InvalidRowError as error:
            raise error.at_row(index) from None
        completions, scores = row["completions"], row.get("scores") if has_scores else None

        def untied(i: int, j: int) -> bool:
            return scores is None or scores[i] > scores[j]

        # One generator per row, seeded from (seed, row index): a row's draw does not depend on the others.
        rng = random.Random(f"{seed}:{index}")
        kept = 0
        for i, j in make_pairs(len(completions), rng, untied):
            if not untied(i, j):
                report.notes[TIED] += 1
                continue
            pair = {"prompt": row["prompt"], "chosen": completions[i], "rejected": completions[j]}
            if scores is not None:
                pair.update(score_chosen=scores[i], score_rejected=scores[j])
            pair.update({c: row[c] for c in passthrough})
            pairs.append(pair)
            kept += 1
        if kept == 0:
            report.notes[NO_PAIR] += 1
        else:
            report.kept += 1
    report.pairs = len(pairs)
    columns = ["prompt", "chosen", "rejected", *(["score_chosen", "score_rejected"] if scores_present(dataset) else []), *passthrough]
    return datasets.Dataset.from_dict({c: [p.get(c) for p in pairs] for c in columns}), report


def scores_present(dataset: datasets.Dataset) -> bool:
    return "scores" in dataset.column_names and any(s is not None for s in dataset["scores"])


def to_pairs(dataset, strategy: str = "all_pairs", *, seed: int = 0, return_report: bool = False):
    """Pairwise rows from K-wise rows.

    Strategies (i < j means completion i is ranked above j):
        all_pairs       every (i, j): K(K-1)/2 pairs
        best_vs_rest    (0, j) for every j > 0
        best_vs_worst   (0, K-1)
        adjacent        (i, i+1)
        best_vs_random  (0, j) with j drawn (seeded by ``seed`` and the row index) among the
                        completions scored strictly below the best

    Pairs whose scores tie are skipped and counted (``report.notes``); a warning is logged.
    Other columns are copied onto every pair of their row. Returns a Dataset (a DatasetDict for a
    DatasetDict), or ``(dataset, report)`` with ``return_report=True``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if isinstance(dataset, datasets.DatasetDict):
        results = {name: _split_to_pairs(split, strategy, seed) for name, split in dataset.items()}
        for name, (_, report) in results.items():
            report.log(f"to_pairs(strategy={strategy!r}, split={name!r})")
        output = datasets.DatasetDict({name: result[0] for name, result in results.items()})
        return (output, {name: result[1] for name, result in results.items()}) if return_report else output
    output, report = _split_to_pairs(dataset, strategy, seed)
    report.log(f"to_pairs(strategy={strategy!r})")
    return (output, report) if return_report else output
