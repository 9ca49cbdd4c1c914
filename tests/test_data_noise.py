"""Label-noise tools: seeded flips at an exact rate, recorded per row; flip-rate estimation from trusted rows."""

import datasets
import pytest

from prefopt.data import estimate_flip_rate, flip_labels

CLEAN = datasets.Dataset.from_list(
    [{"prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}", "score_chosen": 1.0, "score_rejected": 0.0} for i in range(10)]
)


def test_flip_labels_flips_exactly_round_rate_times_n_rows_and_records_them():
    noisy = flip_labels(CLEAN, 0.3, seed=7)
    assert noisy.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "label_flipped"]
    flipped = [i for i, f in enumerate(noisy["label_flipped"]) if f]
    assert len(flipped) == 3
    for i, row in enumerate(noisy):
        expected = (f"bad{i}", f"good{i}") if i in flipped else (f"good{i}", f"bad{i}")
        assert (row["chosen"], row["rejected"]) == expected
        # scores stay in place: the noisy annotator's soft label agrees with the noisy hard label
        assert (row["score_chosen"], row["score_rejected"]) == (1.0, 0.0)
    assert flip_labels(CLEAN, 0.3, seed=7)["label_flipped"] == noisy["label_flipped"]
    assert flip_labels(CLEAN, 0.3, seed=8)["label_flipped"] != noisy["label_flipped"]


def test_flip_labels_edge_rates_and_errors():
    assert not any(flip_labels(CLEAN, 0.0)["label_flipped"]) and all(flip_labels(CLEAN, 1.0)["label_flipped"])
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\]"):
        flip_labels(CLEAN, 1.5)
    with pytest.raises(ValueError, match="already exists"):
        flip_labels(flip_labels(CLEAN, 0.1), 0.1)
    with pytest.raises(ValueError, match="needs pairwise data"):
        flip_labels(CLEAN.remove_columns("rejected"), 0.1)


def test_estimate_flip_rate_from_a_trusted_subset():
    noisy = flip_labels(CLEAN, 0.3, seed=7)
    estimate = estimate_flip_rate(noisy, CLEAN)
    assert (estimate.rate, estimate.compared, estimate.disagreements, estimate.unmatched) == (0.3, 10, 3, 0)
    # exact Clopper-Pearson 95% interval for 3 successes in 10 trials
    assert estimate.low == pytest.approx(0.06674, abs=1e-4) and estimate.high == pytest.approx(0.65245, abs=1e-4)
    # a trusted subset of 4 rows, 1 of them flipped in the noisy data, plus one row the noisy data lacks
    flipped = [i for i, f in enumerate(noisy["label_flipped"]) if f]
    kept = [i for i in range(10) if i not in flipped]
    trusted = [CLEAN[flipped[0]], *(CLEAN[i] for i in kept[:3]), {"prompt": "other", "chosen": "a", "rejected": "b"}]
    estimate = estimate_flip_rate(noisy, trusted)
    assert (estimate.rate, estimate.compared, estimate.disagreements, estimate.unmatched) == (0.25, 4, 1, 1)


def test_estimate_flip_rate_needs_a_match():
    with pytest.raises(ValueError, match="no trusted row matches"):
        estimate_flip_rate(CLEAN, [{"prompt": "x", "chosen": "a", "rejected": "b"}])
