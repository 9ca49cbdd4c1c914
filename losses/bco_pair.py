"""BCO (pairwise): binary classifier optimisation on implicit rewards.

Paper: Jung, Han, Nam, On (2024). "Binary Classifier Optimization for Large Language
Model Alignment". arXiv:2404.04656. The chosen response is a positive and the rejected one a
negative for a logistic classifier whose logit is the implicit reward shifted by delta:

    L = -log sigma(beta rho_c - delta) - log sigma(-(beta rho_r - delta)),   rho = policy - reference

Running state: the paper sets delta to a running mean of the implicit rewards. TRL 1.16's
``loss_type="bco_pair"`` no longer keeps that state (it is delta = 0), which is prefopt's default so
the values match TRL. prefopt keeps the loss pure and exposes delta as a hyper-parameter; to follow
the paper, train with ``prefopt.callbacks.RewardShiftCallback``, which sets delta to the running mean
of beta * (policy - reference) over every response trained on so far (or pass a fixed ``delta`` in
``loss_kwargs``). Default beta = 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios
from ._registry import register_loss


@register_loss(
    "bco_pair",
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment",
    arxiv="2404.04656",
    trl_name="bco_pair",
)
def bco_pair(batch: LogProbs, *, beta: float = 0.1, delta: float = 0.0) -> torch.Tensor:
    """-log sigma(beta rho_c - delta) - log sigma(delta - beta rho_r); delta = 0 is TRL 1.16."""
    chosen, rejected = chosen_rejected(beta * log_ratios(batch.policy, batch.reference))
    return -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))  # BCO with reward shift delta
