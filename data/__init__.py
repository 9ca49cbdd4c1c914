"""prefopt.data: dataset adapters for pairwise and K-wise preference data, bundled tasks, metrics.

    from prefopt.data import load_preferences, to_pairs
    pairs = load_preferences("hh.jsonl", format="hh")              # prompt / chosen / rejected
    ranked = load_preferences(rows, format="scored")               # prompt / completions / scores
    pairs = to_pairs(ranked, strategy="best_vs_rest")              # tied scores never become a pair

Canonical schemas:
    pairwise  prompt, chosen, rejected [, score_chosen, score_rejected]
    K-wise    prompt, completions (best first) [, scores (same order)]
"""

from ._validation import (
    KWISE_COLUMNS,
    PAIRWISE_COLUMNS,
    REASONS,
    InvalidRowError,
    ValidationReport,
)
from .evaluation import WinRate, list_metrics, load_metric, metric_path, preference_accuracy, wilson_interval, win_rate
from .formats import FormatSpec, get_format, list_formats, register_format, unregister_format
from .loading import load_preferences
from .noise import FlipRateEstimate, estimate_flip_rate, flip_labels
from .pairs import STRATEGIES, to_pairs
from .tasks import Task, get_task, list_tasks, render_chatml

__all__ = [
    "KWISE_COLUMNS",
    "PAIRWISE_COLUMNS",
    "REASONS",
    "STRATEGIES",
    "FlipRateEstimate",
    "FormatSpec",
    "InvalidRowError",
    "Task",
    "ValidationReport",
    "WinRate",
    "estimate_flip_rate",
    "flip_labels",
    "get_format",
    "get_task",
    "list_formats",
    "list_metrics",
    "list_tasks",
    "load_metric",
    "load_preferences",
    "metric_path",
    "preference_accuracy",
    "wilson_interval",
    "win_rate",
    "register_format",
    "render_chatml",
    "to_pairs",
    "unregister_format",
]
