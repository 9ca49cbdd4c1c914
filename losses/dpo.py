"""DPO: the sigmoid (Bradley-Terry) preference loss on implicit rewards.

Paper: Rafailov, Sharma, Mitchell, Ermon, Manning, Finn (2023). "Direct Preference Optimization:
Your Language Model is Secretly a Reward Model". arXiv:2305.18290, Eq. 7:

    L = -log sigma(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

Default beta = 0.1 (the paper's value for most experiments, and TRL's default). Same value as TRL's
``loss_type="sigmoid"``.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import dpo_margin, sigmoid_loss
from ._registry import register_loss


@register_loss(
    "dpo",
    paper="Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    arxiv="2305.18290",
    trl_name="sigmoid",
    log_ratio_form=True,
)
def dpo(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """-log sigma(beta h), h = (pc - rc) - (pr - rr)."""
    return sigmoid_loss(dpo_margin(batch), beta)  # Eq. 7 of Rafailov et al. 2023
