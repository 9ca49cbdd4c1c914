"""Win rate under a reward function: how often a policy's response out-scores a baseline response.

The reward is either a callable ``reward_fn(prompt, response) -> float`` or the name of a bundled
prefopt task (``task="arithmetic"``), whose programmatic ground-truth reward is used. Prompts are
strings (a user message, or a ChatML-rendered conversation). A tie counts as half a win, as in
AlpacaEval-style win rates; wins, ties and losses are also returned.
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of prompts where the prediction's reward beats the reference's (ties count half)."
_KWARGS_DESCRIPTION = """
Args:
    prompts (list of str): the prompts.
    predictions (list of str): the policy's responses.
    references (list of str): the baseline responses.
    reward_fn (callable, optional): reward_fn(prompt, response) -> float.
    task (str, optional): name of a bundled prefopt task whose reward to use instead.
Returns:
    win_rate (float): (wins + ties / 2) / count, with its 95% Wilson interval win_rate_low, win_rate_high
    (prefopt.data.win_rate, the statistic of every prefopt win rate); wins, ties, losses, count (int);
    mean_reward_predictions, mean_reward_references (float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "prompts": datasets.Value("string"),
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, prompts, predictions, references, reward_fn=None, task=None):
        if (reward_fn is None) == (task is None):
            raise ValueError("win_rate needs exactly one of reward_fn= (a callable) or task= (a prefopt task name)")
        if task is not None:
            # evaluate loads this file as a module of its own: prefopt is imported when the metric computes
            from prefopt.data.tasks import get_task

            reward_fn = get_task(task).reward
        count = len(prompts)
        if count == 0:
            raise ValueError("win_rate needs at least one prompt")
        predicted = [float(reward_fn(p, r)) for p, r in zip(prompts, predictions)]
        baseline = [float(reward_fn(p, r)) for p, r in zip(prompts, references)]
        from prefopt.data.evaluation import win_rate  # (as above: evaluate loads this file on its own)

        outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(predicted, baseline)]
        statistic = win_rate(outcomes)
        wins = sum(a > b for a, b in zip(predicted, baseline))
        ties = sum(a == b for a, b in zip(predicted, baseline))
        return {
            "win_rate": statistic.mean,
            "win_rate_low": statistic.low,
            "win_rate_high": statistic.high,
            "wins": wins,
            "ties": ties,
            "losses": count - wins - ties,
            "count": count,
            "mean_reward_predictions": sum(predicted) / count,
            "mean_reward_references": sum(baseline) / count,
        }
