"""DiscoPOP: the LLM-discovered log-ratio modulated loss (a logistic/exponential blend).

Paper: Lu et al. (2024). "Discovering Preference
Optimization Algorithms with and for Large Language Models". arXiv:2406.08414, Eq. 5. With
logits z = beta h and modulation m = sigma(z / tau):

    L = -log sigma(z) * (1 - m) + exp(-z) * m

Default beta = 0.1, tau = 0.05 (the paper's value; TRL's ``discopop_tau``). Same value as TRL 1.16
``loss_type="discopop"``. prefopt computes exp(-z) * m as exp(-z + log sigma(z / tau)), which is
the same number where TRL's form is finite and stays finite (instead of inf * 0 = NaN) for very
negative margins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import dpo_margin
from ._registry import register_loss


@register_loss(
    "discopop",
    paper="Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large Language Models",
    arxiv="2406.08414",
    trl_name="discopop",
    ranges={"tau": (0, None, "()")},
    log_ratio_form=True,
)
def discopop(batch: LogProbs, *, beta: float = 0.1, tau: float = 0.05) -> torch.Tensor:
    """-log sigma(beta h) (1 - m) + exp(-beta h) m, m = sigma(beta h / tau)."""
    logits = beta * dpo_margin(batch)
    modulation = torch.sigmoid(logits / tau)
    exponential_part = torch.exp(-logits + F.logsigmoid(logits / tau))  # = exp(-z) * m, overflow-free
    return -F.logsigmoid(logits) * (1 - modulation) + exponential_part  # Eq. 5 of Lu et al. 2024
