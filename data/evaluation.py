"""Resolve and load prefopt's local `evaluate` metric modules (data/metrics/*.py), never from the Hub."""

from __future__ import annotations

from pathlib import Path

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
