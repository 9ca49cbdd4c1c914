"""BVPO: bias-variance optimised preference optimisation for reasoning models.

Paper: Zhu, Chen, Yu, Zhao, Jia (2025). "From Noisy Traces to Stable Gradients: Bias-Variance Optimized
Preference Optimization for Aligning Large Reasoning Models". arXiv:2510.05095. A reasoning
model's response is (trace, answer). The trace view scores trace + answer jointly (low bias, high
variance: traces are long and random); the empty-trace view scores answers produced and scored with
the thinking block present but empty (biased, low variance). BVPO mixes the two DPO gradients:

    L = alpha * dpo(policy, reference) + (1 - alpha) * dpo(empty_policy, empty_reference)

Defaults: beta = 0.1, alpha = 0.5. alpha = 1 is DPO on the trace view. ``alpha="auto"`` (the
MSE-optimal weight estimated from per-micro-batch gradient statistics, prefopt's own estimator) is
computed every step by ``prefopt.reasoning.AutoAlphaCallback``, which then calls this loss with the
numeric value; the loss itself only takes a number in [0, 1].
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import pair_margin, sigmoid_loss
from ._registry import register_loss


@register_loss(
    "bvpo",
    paper="Zhu et al. 2025, From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference "
    "Optimization for Aligning Large Reasoning Models",
    arxiv="2510.05095",
    requires=("empty_policy", "empty_reference"),
    ranges={"alpha": (0, 1, "[]")},  # alpha mixes the two views
    choices={"alpha": ("auto",)},  # or estimated every step by prefopt.reasoning.AutoAlphaCallback
)
def bvpo(batch: LogProbs, *, beta: float = 0.1, alpha: float = 0.5) -> torch.Tensor:
    """alpha * dpo(trace view) + (1 - alpha) * dpo(empty-trace view)."""
    if alpha == "auto":  # a valid setting of the run, resolved to a number every step before the loss is called
        raise ValueError(
            "loss 'bvpo': alpha='auto' is estimated every step from gradient statistics by "
            "prefopt.reasoning.AutoAlphaCallback (pass callbacks=[AutoAlphaCallback()] to the Trainer), which then "
            "calls this loss with the estimate; called directly, pass a number in [0, 1]"
        )
    trace_loss = sigmoid_loss(pair_margin(batch.policy, batch.reference), beta)
    empty_trace_loss = sigmoid_loss(pair_margin(batch.empty_policy, batch.empty_reference), beta)
    return alpha * trace_loss + (1 - alpha) * empty_trace_loss  # BVPO mixture of the two DPO estimators
