"""The non-finite guard: a NaN or inf in a step's log-probs, loss components, total loss or gradients
never trains silently.

`check_inputs` looks at one batch's `LogProbs` fields, `check_losses` at its per-example component
values and total loss, `check_gradients` at the gradients after backward. Each raises `NonFiniteError` naming the step, what
was non-finite (field, loss component, total or parameter) and the batch rows affected, so the user can
find the data. The trainer calls them from `_compute_loss` / `training_step`; with
`PrefOptConfig(on_nonfinite=...)` it raises it (``"error"``), stops training at the last finite weights
(``"stop"``), or skips the batch and counts it (``"skip"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from prefopt.losses._batch import invalid_values

ON_NONFINITE = ("error", "stop", "skip")


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
