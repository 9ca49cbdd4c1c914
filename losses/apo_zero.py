"""APO-zero: anchored preference optimisation, raising the chosen and lowering the rejected reward.

Paper: D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela, Mehri (2024). "Anchored
Preference Optimization and Contrastive Revisions: Addressing Underspecification in Alignment".
arXiv:2408.06266, Eq. 7 (rho = policy - reference):

    L = (1 - sigma(beta rho_c)) + sigma(beta rho_r)

Use when the chosen outputs are better than the model's own. Default beta = 0.1. Same as TRL 1.16
``loss_type="apo_zero"``.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios
from ._registry import register_loss


@register_loss(
    "apo_zero",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: Addressing "
    "Underspecification in Alignment",
    arxiv="2408.06266",
    trl_name="apo_zero",
)
def apo_zero(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """(1 - sigma(beta rho_c)) + sigma(beta rho_r)."""
    chosen, rejected = chosen_rejected(beta * log_ratios(batch.policy, batch.reference))
    return (1 - torch.sigmoid(chosen)) + torch.sigmoid(rejected)  # Eq. 7 of D'Oosterlinck et al. 2024
