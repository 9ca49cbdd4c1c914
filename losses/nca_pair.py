"""NCA (pairwise): noise-contrastive alignment on absolute implicit rewards.

Paper: Chen et al. (2024). "Noise Contrastive Alignment of Language Models with
Explicit Rewards". arXiv:2402.05369, Sec. 4.1. As TRL 1.16 ``loss_type="nca_pair"``, with
rho = policy - reference per response:

    L = -log sigma(beta rho_c) - 0.5 log sigma(-beta rho_c) - 0.5 log sigma(-beta rho_r)

Unlike DPO it constrains each reward, not only their difference, so the chosen likelihood does not
fall. Default beta = 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios
from ._registry import register_loss


@register_loss(
    "nca_pair",
    paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arxiv="2402.05369",
    trl_name="nca_pair",
)
def nca_pair(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """-log sigma(beta rho_c) - 0.5 log sigma(-beta rho_c) - 0.5 log sigma(-beta rho_r)."""
    chosen, rejected = chosen_rejected(beta * log_ratios(batch.policy, batch.reference))
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)  # NCA pair loss
