"""What a training run did, for a notebook or a terminal: `training_summary` and `plot_history`.

    trainer.train()
    trainer.summary()                                  # a small table: held-out metrics, data, timing
    prefopt.plot_history(trainer.state.log_history)    # loss, reward margins, accuracies per step

Both read what the trainer already keeps (``trainer.state.log_history``, ``trainer.dropped_rows``,
the tokenised datasets); nothing here changes training. No pandas: `TrainingSummary` renders itself
as text (``print``), markdown (``_repr_markdown_``) and HTML (``_repr_html_``, Jupyter's table).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from prefopt.training.batching import truncation_reasons

# Curves `plot_history` draws by default: one panel per entry, train and eval_ lines in each.
DEFAULT_CURVES = ("loss", "rewards/margins", "rewards/accuracies")


@dataclass(frozen=True)
class TrainingSummary:
    """Rows of (section, name, value), names unique; ``summary["eval_loss"]`` reads a value, ``to_dict()`` all."""

    rows: tuple[tuple[str, str, Any], ...]

    def __getitem__(self, name: str) -> Any:
        for _, row_name, value in self.rows:
            if row_name == name:
                return value
        raise KeyError(f"{name!r} is not in the summary; it has {[row[1] for row in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {name: value for _, name, value in self.rows}

    def _cells(self) -> list[tuple[str, str, str]]:
        return [(section, name, _format(value)) for section, name, value in self.rows]

    def __str__(self) -> str:
        cells = self._cells()
        if not cells:
            return "(nothing logged yet: call trainer.train() first)"
        name_width = max(len(name) for _, name, _ in cells)
        value_width = max(len(value) for _, _, value in cells)
        lines, section = [], None
        for row_section, name, value in cells:
            if row_section != section:
                lines.append(("" if section is None else "\n") + row_section)
                section = row_section
            lines.append(f"  {name:<{name_width}}  {value:>{value_width}}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        lines = ["| section | metric | value |", "|---|---|---:|"]
        lines += [f"| {section} | `{name}` | {value} |" for section, name, value in self._cells()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(section)}</td><td><code>{html.escape(name)}</code></td>"
            f"<td style='text-align:right'>{html.escape(value)}</td></tr>"
            for section, name, value in self._cells()
        )
        return (
            "<table><thead><tr><th>section</th><th>metric</th><th>value</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def training_summary(trainer) -> TrainingSummary:
    """Held-out metrics (the last evaluation), data counts and timing of ``trainer``'s run so far."""
    history = list(trainer.state.log_history)
    rows: list[tuple[str, str, Any]] = []

    evaluations = [entry for entry in history if any(key.startswith("eval_") for key in entry)]
    if evaluations:
        last = evaluations[-1]
        for key, value in last.items():
            if key.startswith("eval_") and not key.endswith(("_runtime", "_per_second")):
                rows.append(("held-out (last evaluation)", key, value))
        if "step" in last:
            rows.append(("held-out (last evaluation)", "evaluated at step", last["step"]))

    training_logs = [entry for entry in history if "loss" in entry and not any(k.startswith("eval_") for k in entry)]
    if training_logs:
        last = training_logs[-1]
        for key in ("loss", "rewards/accuracies", "rewards/margins"):
            if key in last:
                rows.append(("training (last logged step)", key, last[key]))

    stop = getattr(trainer, "nonfinite_stop", None)
    if stop is not None:  # on_nonfinite="stop" ended the run early
        rows.append(("training (last logged step)", "stopped by a non-finite value at step", stop["step"]))
        rows.append(("training (last logged step)", "non-finite value", stop["where"]))

    for name in ("train", "eval"):
        dataset = getattr(trainer, f"{name}_dataset", None)
        if dataset is None:
            continue
        rows.append(("data", f"{name} rows used", len(dataset)))
        rows.append(("data", f"{name} rows dropped (prompt fills max_length)", trainer.dropped_rows.get(name, 0)))
        truncated = count_truncated(dataset, trainer.args.max_length)
        if truncated is not None:
            rows.append(("data", f"{name} rows truncated to max_length={trainer.args.max_length}", truncated))
        for reason, count in getattr(trainer, "truncated_rows", {}).get(name, {}).items():
            rows.append(("data", f"{name} rows: {reason}", count))

    final = next((entry for entry in reversed(history) if "train_runtime" in entry), None)
    if final is not None:
        steps = trainer.state.global_step
        rows.append(("timing", "optimizer steps", steps))
        rows.append(("timing", "training seconds", final["train_runtime"]))
        if steps:
            rows.append(("timing", "seconds per step", final["train_runtime"] / steps))
    eval_seconds = [entry["eval_runtime"] for entry in history if "eval_runtime" in entry]
    if eval_seconds:
        rows.append(("timing", "evaluations", len(eval_seconds)))
        rows.append(("timing", "seconds per evaluation", sum(eval_seconds) / len(eval_seconds)))
    return TrainingSummary(tuple(rows))


def count_truncated(dataset, max_length: int | None) -> int | None:
    """Rows with a response whose prompt + response exceeds ``max_length`` tokens (the collator cuts it).

    None when the dataset is not tokenised in a known layout (pairs or K-wise) or has no length.
    """
    if max_length is None:
        return 0
    try:
        columns = set(dataset.column_names)
    except AttributeError:
        return None
    if "prompt_ids" not in columns:
        return None
    if {"chosen_ids", "rejected_ids"} <= columns:
        response_columns = ("chosen_ids", "rejected_ids")
    elif "completions_ids" in columns:
        response_columns = ("completions_ids",)
    else:
        return None
    truncated = 0
    for example in dataset.select_columns(["prompt_ids", *response_columns]):
        truncated += bool(truncation_reasons(example, max_length))
    return truncated


def plot_history(
    log_history: Iterable[Mapping[str, Any]],
    curves: Sequence[str] = DEFAULT_CURVES,
    *,
    path: str | None = None,
):
    """One panel per curve (e.g. "loss", "rewards/margins"), training and held-out (``eval_``) values
    against the optimizer step; returns the matplotlib Figure (saved to ``path`` when given).

    Curves that were never logged are left out; at least one must be present.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "prefopt.plot_history needs matplotlib: pip install matplotlib (it is in prefopt's dev extra)"
        ) from error
    history = list(log_history)
    panels = []
    for curve in curves:
        lines = {}
        for label, key in (("train", curve), ("held-out", f"eval_{curve}")):
            points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
            if points:
                lines[label] = points
        if lines:
            panels.append((curve, lines))
    if not panels:
        logged = sorted({key for entry in history for key in entry} - {"step", "epoch"})
        raise ValueError(f"none of the curves {list(curves)} was logged; the history has {logged}")
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for axis, (curve, lines) in zip(axes[0], panels):
        for label, points in lines.items():
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        axis.set_title(curve)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend()
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
