"""SimPO: simple reference-free preference optimisation with a length-normalised reward and margin.

Paper: Meng, Xia, Chen (2024). "SimPO: Simple Preference Optimization with a Reference-Free
Reward". arXiv:2405.14734:

    L = -log sigma(beta * (pc / len_c - pr / len_r) - gamma)

Defaults: beta = 2.0, gamma = 0.5 (prefopt's defaults; the paper tunes beta in [2, 10] and
gamma/beta per model). Reference-free: it reads only the policy log-probs and the token counts.
Used downstream of CDR annotation in the CDR paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import per_token
from ._registry import register_loss


@register_loss(
    "simpo",
    paper="Meng, Xia, Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arxiv="2405.14734",
    needs_reference=False,
    requires=("lengths",),
)
def simpo(batch: LogProbs, *, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """-log sigma(beta*(pc/len_c - pr/len_r) - gamma); reference-free."""
    average_logps = per_token(batch.policy, batch.lengths)
    return -F.logsigmoid(beta * (average_logps[:, 0] - average_logps[:, 1]) - gamma)  # SimPO objective
