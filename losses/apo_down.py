"""APO-down: anchored preference optimisation, lowering both rewards, the rejected one more.

Paper: D'Oosterlinck et al. (2024). "Anchored Preference Optimization and Contrastive Revisions:
Addressing Underspecification in Alignment". arXiv:2408.06266, Eq. 8 (rho = policy - reference):

    L = sigma(beta rho_c) + (1 - sigma(beta (rho_c - rho_r)))

Use when the chosen outputs are worse than the model's own. Default beta = 0.1. Same as TRL 1.16
``loss_type="apo_down"``.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios
from ._registry import register_loss


@register_loss(
    "apo_down",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: Addressing "
    "Underspecification in Alignment",
    arxiv="2408.06266",
    trl_name="apo_down",
)
def apo_down(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """sigma(beta rho_c) + (1 - sigma(beta (rho_c - rho_r)))."""
    chosen, rejected = chosen_rejected(beta * log_ratios(batch.policy, batch.reference))
    return torch.sigmoid(chosen) + (1 - torch.sigmoid(chosen - rejected))  # Eq. 8 of D'Oosterlinck et al. 2024
