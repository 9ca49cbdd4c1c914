"""cDPO: conservative DPO, i.e. DPO with label smoothing.

Source: Mitchell (2023). "A note on DPO with noisy preferences & relationship to IPO" (technical
note, no arXiv id; https://ericmitchell.ai/cdpo.pdf), Eq. 3. If a label is flipped with probability eps, the expected DPO loss under the
smoothed target is

    L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),   h = (pc - rc) - (pr - rr)

Defaults: beta = 0.1, epsilon = 0.1. epsilon must lie in [0, 0.5]; eps = 0 is DPO. Unlike rDPO this
loss is *not* unbiased under flips (it shrinks the optimal margin instead). TRL 1.16's ``sigmoid``
ignores ``label_smoothing``, so TRL has no equivalent.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import dpo_margin, smoothed_sigmoid_loss
from ._registry import register_loss


@register_loss(
    "cdpo",
    paper="Mitchell 2023, A note on DPO with noisy preferences & relationship to IPO",
    ranges={"epsilon": (0, 0.5, "[]")},  # a label-flip probability
    log_ratio_form=True,
)
def cdpo(batch: LogProbs, *, beta: float = 0.1, epsilon: float = 0.1) -> torch.Tensor:
    """-(1-eps) log sigma(beta h) - eps log sigma(-beta h): DPO against labels smoothed by eps."""
    return smoothed_sigmoid_loss(dpo_margin(batch), beta, epsilon)  # Eq. 3 of Mitchell 2023 (label-smoothed DPO)
