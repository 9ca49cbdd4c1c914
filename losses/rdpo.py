"""rDPO: provably robust DPO under random label flips.

Paper: Chowdhury, Kini, Natarajan (2024). "Provably Robust DPO: Aligning Language Models with Noisy
Feedback". arXiv:2403.00409, the rDPO loss (Sec. 3.1):

    L = [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)

where eps is the probability that a preference label was flipped. Its expectation over random flips
equals the DPO loss on clean labels (it is an unbiased estimator), which is why it needs eps < 0.5.
Defaults: beta = 0.1, epsilon = 0.1 (the paper's typical value). Same value as TRL's
``loss_type="robust"`` with ``label_smoothing = epsilon``. Estimate eps from a small trusted subset
with ``prefopt.data`` (label-noise tools) or supply a known rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import dpo_margin
from ._registry import register_loss


@register_loss(
    "rdpo",
    paper="Chowdhury, Kini, Natarajan 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    arxiv="2403.00409",
    trl_name="robust",
    ranges={"epsilon": (0, 0.5, "[)")},  # a label-flip rate; 1 / (1 - 2 eps) diverges at 0.5
    log_ratio_form=True,
)
def rdpo(batch: LogProbs, *, beta: float = 0.1, epsilon: float = 0.1) -> torch.Tensor:
    """[-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps): unbiased under flips with rate eps."""
    margin = dpo_margin(batch)
    # rDPO loss of Chowdhury et al. 2024 (Sec. 3.1): de-biased combination of the clean and flipped DPO terms
    return (-(1 - epsilon) * F.logsigmoid(beta * margin) + epsilon * F.logsigmoid(-beta * margin)) / (1 - 2 * epsilon)
