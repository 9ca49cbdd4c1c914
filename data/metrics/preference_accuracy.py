"""Preference accuracy: how often the implicit reward of the chosen response beats the rejected one.

The implicit reward of a response y is beta * (log pi(y|x) - log pi_ref(y|x)); pass the per-pair
values for chosen and rejected. A tie counts as wrong, as in TRL's ``rewards/accuracies``.
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of pairs whose chosen implicit reward is strictly above the rejected one."
_KWARGS_DESCRIPTION = """
Args:
    chosen_rewards (list of float): implicit reward of each chosen response.
    rejected_rewards (list of float): implicit reward of each rejected response, same order.
Returns:
    accuracy (float): mean of chosen_rewards > rejected_rewards.
    mean_margin (float): mean of chosen_rewards - rejected_rewards.
    ties (int): pairs with equal rewards (counted as wrong).
    count (int): number of pairs.
Examples:
    >>> metric = prefopt.data.load_metric("preference_accuracy")
    >>> metric.compute(chosen_rewards=[1.0, 0.2], rejected_rewards=[0.5, 0.4])["accuracy"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"chosen_rewards": datasets.Value("float64"), "rejected_rewards": datasets.Value("float64")}
            ),
        )

    def _compute(self, chosen_rewards, rejected_rewards):
        # the trainer's `rewards/accuracies` and the main job's held-out table use the same function
        # evaluate loads this file as a module of its own: prefopt is imported when the metric computes
        from prefopt.data.evaluation import preference_accuracy

        return preference_accuracy(chosen_rewards, rejected_rewards)
