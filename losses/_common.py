"""Small pieces of arithmetic several losses share (kept here so each is written once)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs


def log_ratios(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """log pi_theta(y|x) - log pi_ref(y|x), elementwise."""
    return policy - reference


def pair_margin(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """h = (pc - rc) - (pr - rr) for [B, 2] tensors (column 0 chosen, column 1 rejected)."""
    ratios = log_ratios(policy, reference)
    return ratios[:, 0] - ratios[:, 1]


def sigmoid_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigma(beta * margin), computed stably for any margin."""
    return -F.logsigmoid(beta * margin)


def smoothed_sigmoid_loss(margin: torch.Tensor, beta: float, epsilon: float) -> torch.Tensor:
    """-(1 - eps) log sigma(beta h) - eps log sigma(-beta h): DPO against a label that is wrong with probability eps."""
    return -(1 - epsilon) * F.logsigmoid(beta * margin) - epsilon * F.logsigmoid(-beta * margin)


def dpo_margin(batch: LogProbs) -> torch.Tensor:
    """The DPO margin h of a pairwise batch."""
    return pair_margin(batch.policy, batch.reference)


def chosen_rejected(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [B, 2] tensor into its chosen and rejected columns."""
    return values[:, 0], values[:, 1]


def per_token(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sequence values divided by their token counts (counts below 1 count as 1, as in TRL)."""
    return values / lengths.to(values.dtype).clamp(min=1.0)
