"""Evaluating sampled responses: who wins, under a reward or a preference oracle.

    from prefopt.online.evaluation import compare_samples
    result = compare_samples(judge, prompts, new_samples, old_samples)   # a prefopt.data.WinRate

A judge is either a reward ``(prompts, responses) -> Tensor[N]`` or an oracle ``(prompts, first, second) ->
P(first > second)`` (`prefopt.online.rewards`). `win_outcomes` turns one comparison into an outcome in [0, 1]
(a reward: 1 / 1/2 for a tie / 0; an oracle: its probability), and `compare_samples` summarises outcomes with
the one win-rate statistic, `prefopt.data.win_rate` (mean and Wilson interval). The sampling callbacks and
the round loop both report win rates this way.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from prefopt.data.evaluation import WinRate, win_rate
from prefopt.online.rewards import BradleyTerryOracle, JudgeOracle


def is_oracle(judge) -> bool:
    """An oracle takes (prompts, first, second); a reward takes (prompts, responses)."""
    if isinstance(judge, (BradleyTerryOracle, JudgeOracle)):
        return True
    try:
        parameters = inspect.signature(judge).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(positional) >= 3


def win_outcomes(judge, prompts: Sequence, new: Sequence, old: Sequence, *, oracle: bool | None = None) -> torch.Tensor:
    """Per comparison, the win of ``new[i]`` over ``old[i]`` in [0, 1]: under a reward 1 / 0.5 (tie) / 0; under an
    oracle its P(new > old) (0.5 for a coin flip, so a tie counts half either way). Raises when the judge returns
    the wrong number of values, or (an oracle) values outside [0, 1] or NaN."""
    oracle = is_oracle(judge) if oracle is None else oracle
    count = len(prompts)
    if not len(new) == len(old) == count:
        raise ValueError(f"win_outcomes: {count} prompts, {len(new)} new and {len(old)} old responses")
    if oracle:
        outcomes = torch.as_tensor(judge(list(prompts), list(new), list(old)), dtype=torch.float64).reshape(-1)
    else:
        values = torch.as_tensor(judge(list(prompts) * 2, list(new) + list(old)), dtype=torch.float64).reshape(-1)
        if values.numel() != 2 * count:
            raise ValueError(f"the reward returned {values.numel()} values for {2 * count} responses")
        first, second = values[:count], values[count:]
        outcomes = (first > second).double() + 0.5 * (first == second).double()
    if outcomes.numel() != count:
        raise ValueError(f"the oracle returned {outcomes.numel()} probabilities for {count} comparisons")
    if not bool(torch.isfinite(outcomes).all()) or bool(((outcomes < 0) | (outcomes > 1)).any()):
        raise ValueError(f"the judge gave outcomes outside [0, 1] or NaN: {outcomes.tolist()[:8]}")
    return outcomes


def compare_samples(judge, prompts: Sequence, new: Sequence[Sequence], old: Sequence[Sequence], *,
                    confidence: float = 0.95, oracle: bool | None = None) -> WinRate:
    """The win rate of ``new`` samples over ``old`` ones: sample j of ``new[i]`` against sample j of ``old[i]`` for
    every prompt i (as many j as both have), judged by `win_outcomes`, summarised by `prefopt.data.win_rate`."""
    if len(new) != len(prompts) or len(old) != len(prompts):
        raise ValueError(f"compare_samples: {len(prompts)} prompts, samples for {len(new)} (new) and {len(old)} (old)")
    flat = [(prompt, a[j], b[j]) for prompt, a, b in zip(prompts, new, old) for j in range(min(len(a), len(b)))]
    outcomes = win_outcomes(judge, [x for x, _, _ in flat], [a for _, a, _ in flat], [b for _, _, b in flat], oracle=oracle)
    return win_rate(outcomes, confidence)
