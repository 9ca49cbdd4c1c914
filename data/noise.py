"""Label-noise tools: flip pairwise labels at a known rate, and estimate a flip rate from a trusted subset.

The estimate is what rdpo's ``epsilon`` (the assumed probability that a label is flipped) should
be set to; it comes with an exact (Clopper-Pearson) confidence interval because trusted subsets
are small.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import datasets
from scipy.stats import binomtest

FLIP_COLUMN = "label_flipped"


def flip_labels(dataset, rate: float, *, seed: int = 0, column: str = FLIP_COLUMN):
    """Swap ``chosen`` and ``rejected`` on exactly ``round(rate * len(split))`` rows chosen with ``seed``.

    The boolean column ``column`` records which rows were flipped, so the realised rate is
    ``mean(dataset[column])``. ``score_chosen`` / ``score_rejected`` stay where they are: a noisy
    annotator's scores agree with the noisy label, so a soft-label loss sees the same noise.
    A DatasetDict is flipped split by split with the same seed.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({name: flip_labels(split, rate, seed=seed, column=column) for name, split in dataset.items()})
    for needed in ("chosen", "rejected"):
        if needed not in dataset.column_names:
            raise ValueError(f"flip_labels needs pairwise data; column {needed!r} is missing")
    if column in dataset.column_names:
        raise ValueError(f"column {column!r} already exists; were these labels flipped already?")
    n = len(dataset)
    flipped = set(random.Random(seed).sample(range(n), round(rate * n)))
    chosen, rejected = dataset["chosen"], dataset["rejected"]
    new_chosen = [rejected[i] if i in flipped else chosen[i] for i in range(n)]
    new_rejected = [chosen[i] if i in flipped else rejected[i] for i in range(n)]
    dataset = dataset.remove_columns(["chosen", "rejected"])
    dataset = dataset.add_column("chosen", new_chosen).add_column("rejected", new_rejected)
    dataset = dataset.add_column(column, [i in flipped for i in range(n)])
    order = ["prompt", "chosen", "rejected", *[c for c in dataset.column_names if c not in ("prompt", "chosen", "rejected")]]
    return dataset.select_columns([c for c in order if c in dataset.column_names])


@dataclass(frozen=True)
class FlipRateEstimate:
    rate: float  # disagreements / compared: use as rdpo's epsilon
    low: float  # Clopper-Pearson interval at `confidence`
    high: float
    compared: int  # trusted rows found in the noisy data
    disagreements: int
    unmatched: int  # trusted rows with no counterpart in the noisy data
    confidence: float


def _key(row: dict) -> tuple[str, frozenset]:
    dump = lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False)  # noqa: E731
    return dump(row["prompt"]), frozenset((dump(row["chosen"]), dump(row["rejected"])))


def estimate_flip_rate(noisy, trusted, *, confidence: float = 0.95) -> FlipRateEstimate:
    """Estimate how often ``noisy`` labels are flipped, from ``trusted`` rows with correct labels.

    Rows are matched on (prompt, {chosen, rejected}); a matched noisy row whose ``chosen`` is the
    trusted ``rejected`` counts as a disagreement. ``noisy`` and ``trusted`` are pairwise Datasets
    or lists of row dicts.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    noisy_chosen: dict[tuple, list] = {}
    for row in noisy:
        noisy_chosen.setdefault(_key(row), []).append(row["chosen"])
    compared = disagreements = unmatched = 0
    for row in trusted:
        matches = noisy_chosen.get(_key(row))
        if not matches:
            unmatched += 1
            continue
        for chosen in matches:
            compared += 1
            disagreements += chosen != row["chosen"]
    if compared == 0:
        raise ValueError("no trusted row matches a noisy row on (prompt, {chosen, rejected}); cannot estimate a flip rate")
    interval = binomtest(disagreements, compared).proportion_ci(confidence_level=confidence, method="exact")
    low, high = float(interval.low), float(interval.high)
    return FlipRateEstimate(disagreements / compared, low, high, compared, disagreements, unmatched, confidence)
