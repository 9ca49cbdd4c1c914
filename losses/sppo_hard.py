"""SPPO (hard labels): self-play preference optimisation with the winner's probability set to 1.

Paper: Wu, Sun, Yuan, Ji, Yang, Gu (2024). "Self-Play Preference Optimization for Language Model
Alignment". arXiv:2405.00675, Eq. 4.7 with P(winner) = 1 and P(loser) = 0, as TRL 1.16
``loss_type="sppo_hard"`` (rho = policy - reference):

    L = (rho_c - 1/(2 beta))^2 + (rho_r + 1/(2 beta))^2

The paper's soft probabilities (estimated by a preference model such as PairRM) are computed
outside the loss. Default beta = 0.1.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios
from ._registry import register_loss


@register_loss(
    "sppo_hard",
    paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment",
    arxiv="2405.00675",
    trl_name="sppo_hard",
)
def sppo_hard(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """(rho_c - 1/(2 beta))^2 + (rho_r + 1/(2 beta))^2."""
    chosen, rejected = chosen_rejected(log_ratios(batch.policy, batch.reference))
    return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2  # Eq. 4.7 of Wu et al. 2024, hard labels
