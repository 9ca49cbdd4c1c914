"""EXO (pairwise): efficient exact optimisation, reverse KL to a smoothed preference distribution.

Paper: Ji, Lu, Niu, Ke, Wang, Zhu, Tang, Huang (2024). "Towards Efficient Exact Optimization of
Language Model Alignment" (ICML 2024 title: "Towards Efficient and Exact ..."). arXiv:2402.00856, Eq. 16 with K = 2. With q = sigma(beta h) the
policy's preference probability and the target [1 - eps, eps]:

    L = q (log q - log(1 - eps)) + (1 - q) (log(1 - q) - log eps)

Defaults: beta = 0.1, epsilon = 1e-3 (the paper's recommendation; TRL's ``label_smoothing``).
epsilon must lie in (0, 1): at 0 the target puts zero mass on the rejected response.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import dpo_margin
from ._registry import register_loss


@register_loss(
    "exo_pair",
    paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment",
    arxiv="2402.00856",
    trl_name="exo_pair",
    ranges={"epsilon": (0, 1, "()")},  # log eps and log(1 - eps) must be finite
    log_ratio_form=True,
)
def exo_pair(batch: LogProbs, *, beta: float = 0.1, epsilon: float = 1e-3) -> torch.Tensor:
    """KL(sigma(beta h), [1-eps, eps]) = q (log q - log(1-eps)) + (1-q)(log(1-q) - log eps)."""
    logits = beta * dpo_margin(batch)
    log_q_chosen, log_q_rejected = F.logsigmoid(logits), F.logsigmoid(-logits)
    # Eq. 16 of Ji et al. 2024 (K = 2)
    return torch.sigmoid(logits) * (log_q_chosen - math.log1p(-epsilon)) + torch.sigmoid(-logits) * (
        log_q_rejected - math.log(epsilon)
    )
