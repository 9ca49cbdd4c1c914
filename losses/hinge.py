"""Hinge: the SLiC-HF calibration loss on the DPO margin.

Paper: Zhao et al. (2023). "SLiC-HF: Sequence Likelihood Calibration with
Human Feedback". arXiv:2305.10425, Sec. 2. As TRL 1.16 ``loss_type="hinge"``:

    L = max(0, 1 - beta h)

Default beta = 0.1 (beta is the inverse of the hinge's margin).
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import dpo_margin
from ._registry import register_loss


@register_loss(
    "hinge",
    paper="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arxiv="2305.10425",
    trl_name="hinge",
    log_ratio_form=True,
)
def hinge(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """max(0, 1 - beta h)."""
    return torch.relu(1 - beta * dpo_margin(batch))  # SLiC-HF hinge calibration loss
