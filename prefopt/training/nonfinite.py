"""The non-finite guard: a NaN or inf in a step's log-probs, loss components, total loss or gradients
never trains silently.

`check_inputs` looks at one batch's `LogProbs` fields, `check_losses` at its per-example component
values and total loss, `check_gradients` at the gradients after backward. Each raises `NonFiniteError` naming the step, what
was non-finite (field, loss component, total or parameter) and the batch rows affected, so the user can
find the data. `NonFiniteGuard` is the trainer's collaborator that acts on them, as
`PrefOptConfig(on_nonfinite=...)` says: raise (``"error"``), stop training at the last finite weights
(``"stop"``), or skip the batch and count it (``"skip"``), and report what it did in the logs and at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from prefopt.losses._batch import invalid_values

logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A NaN or inf reached training. ``where`` names the value ("LogProbs.policy", "loss/dpo", ...)."""

    def __init__(self, message: str, where: str, rows: list[int]):
        super().__init__(message)
        self.where, self.rows = where, rows


def _bad_rows(values: torch.Tensor, mask: torch.Tensor | None = None, name: str = "") -> list[int]:
    """Batch rows (dim 0) holding a non-finite value (-inf allowed in LogProbs fields that may hold log 0);
    positions where ``mask`` is False are ignored."""
    bad = invalid_values(name, values)
    if mask is not None and mask.shape == bad.shape:
        bad &= mask
    if bad.dim() > 1:
        bad = bad.flatten(1).any(dim=1)
    elif bad.dim() == 0:
        bad = bad.reshape(1)
    return bad.nonzero().flatten().tolist()


def _all_finite(tensors) -> bool:
    checks = [torch.isfinite(t.detach()).all() for t in tensors if isinstance(t, torch.Tensor)]
    return not checks or bool(torch.stack([check.to(checks[0].device) for check in checks]).all())


def _describe(values: torch.Tensor, rows: list[int]) -> str:
    bad = values.detach()[rows]
    kinds = [kind for kind, hit in (("nan", bad.isnan().any()), ("inf", bad.isinf().any())) if hit]
    return "/".join(kinds) or "non-finite"


def check_inputs(step: int, fields: Mapping[str, torch.Tensor], *, context: str = "train") -> None:
    """Raise `NonFiniteError` for a NaN or inf in a step's `LogProbs` fields ([B, K] or [B]; padding columns,
    where ``fields["mask"]`` is False, are ignored)."""
    floating = {name: values for name, values in fields.items() if values is not None and values.is_floating_point()}
    if _all_finite(floating.values()):  # one device sync per step in the common case
        return
    mask = fields.get("mask")
    for name, values in floating.items():
        rows = _bad_rows(values, mask, name)
        if rows:
            raise NonFiniteError(
                f"{context} step {step}: LogProbs.{name} is {_describe(values, rows)} in batch rows {rows} "
                f"(the model, reference or data column feeding {name} produced a non-finite value; "
                "on_nonfinite='skip' skips such batches)",
                f"LogProbs.{name}", rows,
            )


def check_losses(
    step: int, per_component: Mapping[str, torch.Tensor], total: torch.Tensor, *, context: str = "train"
) -> None:
    """Raise `NonFiniteError` for a NaN or inf in a loss component (per-example values [B]) or the total."""
    if _all_finite([*per_component.values(), total]):
        return
    for name, values in per_component.items():
        rows = _bad_rows(values)
        if rows:
            raise NonFiniteError(
                f"{context} step {step}: loss component {name!r} is {_describe(values, rows)} in batch rows {rows} "
                "although its inputs are finite (a hyper-parameter or the loss overflows on these values)",
                f"loss/{name}", rows,
            )
    if not torch.isfinite(total.detach()).all():
        raise NonFiniteError(f"{context} step {step}: the total loss is {total.item()}", "loss", [])


def check_gradients(step: int, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
    """Raise `NonFiniteError` naming the parameters whose gradient holds a NaN or inf after backward."""
    named = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    if not named:
        return
    finite = torch.stack([torch.isfinite(grad).all() for _, grad in named]).cpu()
    if bool(finite.all()):
        return
    bad = [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteError(
        f"training step {step}: the gradient is non-finite in {len(bad)} parameter(s): {shown} "
        "(the loss was finite; lower the learning rate, enable max_grad_norm, or skip such steps with on_nonfinite='skip')",
        "gradients", [],
    )


class NonFiniteGuard:
    """What a NaN or inf in a training step does, by ``args.nonfinite_policy()`` (read at every use).

    ``skipped`` counts the batches (and accumulated gradients) skipped under ``"skip"``; ``stop`` says what ended
    training under ``"stop"`` (``{"step", "where", "rows", "message"}``), None while all is finite."""

    def __init__(self, args):
        self.args = args
        self.skipped = self._skipped_logged = 0
        self.stop: dict[str, Any] | None = None
        self._skipping_batch = False
        self._trained_since_log = 0

    def reset(self) -> None:
        """At the start of training: nothing has stopped it yet."""
        self.stop = None

    def handles(self, mode: str) -> bool:
        """Whether a non-finite value in ``mode`` is skipped or stops training (else it is raised)."""
        return mode == "train" and self.args.nonfinite_policy() != "error"

    def skip_batch(self, error: NonFiniteError, step: int, like: torch.Tensor, control) -> torch.Tensor:
        """A zero loss with no gradient into the model for this batch (the step reports it as NaN); under "stop"
        training also ends after this step."""
        self._skipping_batch = True
        self._stop_or_count(error, step, "a batch", control)
        return torch.zeros((), device=like.device, dtype=like.dtype, requires_grad=True)

    def _stop_or_count(self, error: NonFiniteError, step: int, skipped: str, control) -> None:
        if self.args.nonfinite_policy() == "stop":
            self._stop_training(error, step, control)
        else:
            self.skipped += 1
            logger.warning("skipping %s (on_nonfinite='skip', %d skipped so far): %s", skipped, self.skipped, error)

    def _stop_training(self, error: NonFiniteError, step: int, control) -> None:
        """No update from this optimizer step (the rest of its accumulation window is skipped too), training ends
        after it, the model keeps the weights of the last finite step; said loudly, kept in ``stop``, logged as
        ``nonfinite_stopped_at_step`` and shown by the summary."""
        if self.stop is None:
            self.stop = {"step": step, "where": error.where, "rows": error.rows, "message": str(error)}
            logger.error(
                "stopping training at step %d (on_nonfinite='stop'): %s. The model keeps the weights of step %d, the last "
                "finite one; on_nonfinite='error' raises instead, 'skip' skips such batches and goes on.",
                step, error, step - 1,
            )
        control.should_training_stop = True

    def before_step(self, model, device) -> torch.Tensor | None:
        """NaN for a batch of a window training has stopped in (nothing trains), else None (train it)."""
        self._skipping_batch = False
        if self.stop is not None:
            model.zero_grad(set_to_none=True)
            return torch.tensor(float("nan"), device=device)
        return None

    def after_step(self, model, loss: torch.Tensor, step: int, control) -> torch.Tensor:
        """The step's loss, or NaN when its batch was skipped or its accumulated gradient is not finite (then the
        gradient is dropped: no partial update)."""
        if self._skipping_batch:
            if self.stop is not None:
                model.zero_grad(set_to_none=True)  # earlier batches of this window: no partial update either
            return torch.full_like(loss, float("nan"))
        try:
            check_gradients(step, model.named_parameters())
        except NonFiniteError as error:
            if self.args.nonfinite_policy() == "error":
                raise
            self._stop_or_count(error, step, "the accumulated gradient of this step", control)
            model.zero_grad(set_to_none=True)
            return torch.full_like(loss, float("nan"))
        self._trained_since_log += 1
        return loss

    def add_to_log(self, logs: dict[str, float]) -> None:
        """The training log's entries: ``nonfinite_skipped`` (under "skip"), ``nonfinite_stopped_at_step``, and a NaN
        loss when every batch since the last log was skipped (no loss to report, not 0.0)."""
        skipped = self.skipped - self._skipped_logged
        self._skipped_logged = self.skipped
        if self.args.nonfinite_policy() == "skip":
            logs["nonfinite_skipped"] = self.skipped
        if self.stop is not None:
            logs["nonfinite_stopped_at_step"] = self.stop["step"]
        if skipped and not self._trained_since_log:
            logs["loss"] = float("nan")
        self._trained_since_log = 0

    def report_end(self, output, max_steps: int) -> None:
        """A run ended by a non-finite value says so again at the end and in the returned metrics."""
        if self.stop is None:
            return
        output.metrics["nonfinite_stopped_at_step"] = self.stop["step"]
        logger.error(
            "training ended early: a non-finite value stopped it at step %d of %d (on_nonfinite='stop'); the model "
            "holds the weights of step %d. %s", self.stop["step"], max_steps, self.stop["step"] - 1, self.stop["message"],
        )
