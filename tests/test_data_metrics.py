"""The local evaluate metrics, loaded offline from their file paths, on hand-computed inputs."""

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_name, "1")

import pytest  # noqa: E402

from prefopt.data import get_task, list_metrics, load_metric, metric_path  # noqa: E402


def test_metrics_are_local_files():
    assert list_metrics() == ["preference_accuracy", "ranking_agreement", "win_rate"]
    for name in list_metrics():
        assert metric_path(name).is_file() and metric_path(name).is_absolute()
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metric_path("bleu")


def test_preference_accuracy_counts_ties_as_wrong():
    metric = load_metric("preference_accuracy")
    result = metric.compute(chosen_rewards=[1.0, 0.2, 0.5, 2.0], rejected_rewards=[0.5, 0.4, 0.5, -1.0])
    assert result == {"accuracy": 0.5, "mean_margin": pytest.approx((0.5 - 0.2 + 0.0 + 3.0) / 4), "ties": 1, "count": 4}


def test_ranking_agreement_kendall_and_spearman():
    metric = load_metric("ranking_agreement")
    # example 1 identical order (tau = rho = 1); example 2 reversed (-1); example 3 one adjacent swap of 3:
    # tau = (2 concordant - 1 discordant) / 3 = 1/3, rho = 1 - 6 * 2 / (3 * 8) = 0.5; example 4 constant -> undefined
    result = metric.compute(
        predictions=[[3, 2, 1], [1, 2, 3], [2, 3, 1], [1, 1, 1]],
        references=[[3, 2, 1], [3, 2, 1], [3, 2, 1], [3, 2, 1]],
    )
    assert result["kendall_tau"] == pytest.approx((1 - 1 + 1 / 3) / 3)
    assert result["spearman"] == pytest.approx((1 - 1 + 0.5) / 3)
    assert result["top1_accuracy"] == 0.5 and result["undefined"] == 1 and result["count"] == 4


def test_win_rate_under_a_callable_and_under_a_task_reward():
    metric = load_metric("win_rate")
    result = metric.compute(prompts=["a", "b", "c"], predictions=["xx", "x", "xy"], references=["x", "xx", "ab"], reward_fn=lambda p, r: len(r))
    assert result["win_rate"] == pytest.approx((1 + 0.5) / 3) and (result["wins"], result["ties"], result["losses"]) == (1, 1, 1)
    prompts = ["What is 12 + 30?", "What is 9 times 3?"]
    result = metric.compute(prompts=prompts, predictions=["12 + 30 = 42. The answer is 42.", "The answer is 28."],
                            references=["The answer is 41.", "9 × 3 = 27, so the answer is 27."], task="arithmetic")
    assert (result["wins"], result["losses"]) == (1, 1)
    assert result["mean_reward_predictions"] == pytest.approx((1.0 + 0.25) / 2)
    assert get_task("arithmetic").reward(prompts[1], "The answer is 28.") == 0.25
    with pytest.raises(ValueError, match="exactly one of reward_fn"):
        metric.compute(prompts=["a"], predictions=["b"], references=["c"])
