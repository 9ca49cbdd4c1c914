"""BVPO's ``alpha="auto"``: the mixing weight of the two views estimated every step from gradients.

`AutoAlphaCallback` estimates the MSE-optimal weight of the trace view from per-micro-batch gradients of the
two views (`auto_alpha`; the estimator is prefopt's own, see its docstring); the trainer logs it every step
(``hyperparameters/bvpo/alpha``, fixed or estimated).
"""

from __future__ import annotations

from typing import Any

import torch

from prefopt.losses import get_loss
from prefopt.training.state import LossStateCallback


def auto_alpha(trace_gradients: torch.Tensor, empty_gradients: torch.Tensor) -> float:
    """MSE-optimal weight of the trace view from per-micro-batch gradients [M, P] of the two views.

    The mixed gradient a g_t + (1 - a) g_e has mean squared error E||g_e + a (g_t - g_e) - g||^2 to the
    unbiased gradient g, minimised at

        a* = E<g_e - g, g_e - g_t> / E||g_t - g_e||^2,   clipped to [0, 1],

    with g approximated by the mean trace gradient over the M micro-batches (the trace view is the unbiased
    one) and E by the mean over micro-batches. This estimator is prefopt's own (LOSSES.md, BVPO), not the
    paper's: the paper derives the optimal alpha from the two views' bias and variance but gives no
    estimator for training. When the two views' gradients coincide on every micro-batch any weight gives
    the same gradient and 1.0 (the unbiased view) is returned.
    """
    if trace_gradients.shape != empty_gradients.shape or trace_gradients.dim() != 2:
        raise ValueError(
            f"auto_alpha takes [micro-batches, parameters] gradients of equal shape, got "
            f"{tuple(trace_gradients.shape)} and {tuple(empty_gradients.shape)}"
        )
    if trace_gradients.size(0) < 2:
        raise ValueError("alpha='auto' needs at least 2 micro-batches per step to estimate gradient statistics")
    trace, empty = trace_gradients.double(), empty_gradients.double()
    unbiased = trace.mean(dim=0, keepdim=True)
    difference = empty - trace
    denominator = (difference * difference).sum(dim=1).mean()
    if denominator <= 0:
        return 1.0
    numerator = ((empty - unbiased) * difference).sum(dim=1).mean()
    alpha = (numerator / denominator).item()  # a* of LOSSES.md (BVPO), prefopt's estimator
    if alpha != alpha:
        raise ValueError("alpha='auto': the gradient statistics are not finite (NaN); check the log-probs of this batch")
    return min(1.0, max(0.0, alpha))


class AutoAlphaCallback(LossStateCallback):
    """BVPO ``alpha="auto"``: before every training step's loss, the batch is split into ``micro_batches``
    groups of pairs (default: 4, or one per pair in smaller batches); each group's gradient of the trace-view loss and of the empty-trace-view loss
    (the ``bvpo`` loss at alpha = 1 and 0) over the trainable parameters feeds `auto_alpha`, and the step
    trains with the result. Costs 2 x micro_batches extra backward passes per step.

        Trainer(..., args=PrefOptConfig(loss="bvpo", loss_kwargs={"alpha": "auto"}), callbacks=[AutoAlphaCallback()])

    The last value is kept in ``alpha`` and logged every step (``hyperparameters/bvpo/alpha``, as every loss
    hyper-parameter); it is part of the checkpoint. An evaluation before the first training step uses alpha = 1.
    """

    def __init__(self, loss: str = "bvpo", micro_batches: int | None = None):
        if micro_batches is not None and micro_batches < 2:
            raise ValueError(f"micro_batches must be >= 2 (gradient statistics need several), got {micro_batches}")
        self.loss, self.micro_batches = loss, micro_batches
        self.alpha: float | None = None
        self.trainer = None

    def bind_trainer(self, trainer) -> None:
        if self.loss not in trainer.preference_loss.names:
            raise ValueError(f"AutoAlphaCallback: loss {self.loss!r} is not trained here {list(trainer.preference_loss.names)}")
        if trainer.loss_hyperparameters[self.loss].get("alpha") != "auto":
            raise ValueError(f"AutoAlphaCallback estimates alpha, but loss {self.loss!r} is configured with a fixed "
                             f"alpha={trainer.loss_hyperparameters[self.loss].get('alpha')!r}; set alpha='auto'")
        self.trainer = trainer

    def before_loss(self, trainer, batch) -> None:
        spec = get_loss(self.loss)
        hyperparameters = {**trainer.loss_hyperparameters[self.loss]}
        parameters = [p for p in trainer.model.parameters() if p.requires_grad]
        groups = torch.arange(batch.batch_size).chunk(self.micro_batches or min(4, batch.batch_size))
        if len(groups) < 2:
            raise ValueError(f"alpha='auto' needs at least 2 pairs per step (micro-batches), got {batch.batch_size}")
        gradients = {1.0: [], 0.0: []}
        for view in gradients:
            per_example = spec(batch, **{**hyperparameters, "alpha": view})
            for group in groups:
                grads = torch.autograd.grad(per_example[group].mean(), parameters, retain_graph=True, allow_unused=True)
                gradients[view].append(torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).detach().float()
                    for g, p in zip(grads, parameters)
                ]))
        self.alpha = auto_alpha(torch.stack(gradients[1.0]), torch.stack(gradients[0.0]))

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        # an evaluation before the first training step scores with the trace view alone (alpha = 1)
        return {self.loss: {"alpha": 1.0 if self.alpha is None else self.alpha}}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = state["alpha"]
