"""Evaluation: the one preference-accuracy statistic, and prefopt's local `evaluate` metric modules.

`preference_accuracy` is the one place a chosen-vs-rejected accuracy is computed (trainer metrics, the main
job's held-out table, the ``preference_accuracy`` evaluate metric). The metric modules (data/metrics/*.py)
are resolved locally, never from the Hub.
"""

from __future__ import annotations

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
