"""Evaluation statistics, one of each, and prefopt's local `evaluate` metric modules.

`preference_accuracy` is the one place a chosen-vs-rejected accuracy is computed (trainer metrics, the main
job's held-out table, the ``preference_accuracy`` evaluate metric); `win_rate` the one win-rate statistic
(mean outcome with a Wilson interval: the sampling callbacks, the round loop, the ``win_rate`` metric). The
metric modules (data/metrics/*.py) are resolved locally, never from the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def list_metrics() -> list[str]:
    return sorted(path.stem for path in METRICS_DIR.glob("*.py") if not path.name.startswith("_"))


def metric_path(name: str) -> Path:
    """Absolute path of the metric module ``name`` (what ``evaluate.load`` takes)."""
    path = METRICS_DIR / f"{name}.py"
    if name not in list_metrics():
        raise ValueError(f"unknown metric {name!r}; prefopt metrics: {', '.join(list_metrics())}")
    return path


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a bundled metric by name; a local file path, so the Hub is never contacted."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


def preference_accuracy(chosen: torch.Tensor | Sequence[float], rejected: torch.Tensor | Sequence[float]) -> dict[str, float]:
    """Share of pairs with chosen strictly above rejected (a tie counts as wrong, as TRL's
    ``rewards/accuracies``), the mean margin, the number of ties and of pairs."""
    chosen, rejected = torch.as_tensor(chosen, dtype=torch.float64), torch.as_tensor(rejected, dtype=torch.float64)
    if chosen.shape != rejected.shape:
        raise ValueError(f"preference_accuracy: chosen has shape {tuple(chosen.shape)}, rejected {tuple(rejected.shape)}")
    count = chosen.numel()
    if count == 0:
        raise ValueError("preference_accuracy needs at least one pair")
    return {
        "accuracy": (chosen > rejected).double().mean().item(),
        "mean_margin": (chosen - rejected).mean().item(),
        "ties": int((chosen == rejected).sum().item()),
        "count": count,
    }


# ------------------------------------------------------------------------------------------------- win rate


def wilson_interval(wins: float, count: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a win rate (``wins`` may be fractional: a tie counts half)."""
    if count < 1:
        raise ValueError("wilson_interval needs at least one comparison")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2, dtype=torch.float64)).item()
    rate = wins / count
    centre = (rate + z * z / (2 * count)) / (1 + z * z / count)
    half = z * ((rate * (1 - rate) / count + z * z / (4 * count * count)) ** 0.5) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    """A win rate: the mean outcome, its Wilson interval (``low``, ``high``), outcomes of exactly 1/2 (``ties``)
    and the number of comparisons (``count``)."""

    mean: float
    low: float
    high: float
    ties: int
    count: int


def win_rate(outcomes: torch.Tensor | Sequence[float], confidence: float = 0.95) -> WinRate:
    """The one win-rate statistic of prefopt (the sampling callbacks, the round loop's per-round metrics, the
    ``win_rate`` evaluate metric). Each outcome is in [0, 1]: 1 a win, 0 a loss, 1/2 a tie (a reward's
    comparison), or an oracle's P(new > old). The estimate is their mean; the interval is Wilson's score interval
    of the summed outcomes over the count, which for fractional outcomes (ties, probabilities) is conservative
    (their variance is at most a Bernoulli's of the same mean) and, unlike a normal interval, stays inside
    [0, 1] and has width for a handful of comparisons or a rate of 0 or 1."""
    values = torch.as_tensor(outcomes, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("win_rate needs at least one comparison")
    if not bool(torch.isfinite(values).all()) or bool(((values < 0) | (values > 1)).any()):
        raise ValueError(f"win_rate: outcomes must be in [0, 1] (1 win, 1/2 tie, 0 loss, or a probability), got {values.tolist()[:8]}")
    low, high = wilson_interval(values.sum().item(), values.numel(), confidence)
    return WinRate(values.mean().item(), low, high, int((values == 0.5).sum().item()), values.numel())
