"""SFT: negative log-likelihood of the chosen response, averaged over tokens (TRL's ``sft``).

TRL 1.16's ``loss_type="sft"`` takes the mean over *all* chosen tokens of the batch,
-sum_i pc_i / sum_i len_i. prefopt returns per-example values whose batch mean is exactly that:

    L_i = -pc_i / mean_j(len_j)

so weighting and averaging behave as in TRL. Because the denominator is the batch's mean length,
one example's value depends on the other examples' lengths (``batch_coupled``). No
hyper-parameters; typically combined with a preference loss, e.g. ``[("dpo", 1.0), ("sft", 0.5)]``.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._registry import register_loss


@register_loss(
    "sft",
    paper="Supervised fine-tuning (negative log-likelihood) as in TRL's DPOTrainer loss_type='sft'",
    needs_reference=False,
    requires=("lengths",),
    trl_name="sft",
    batch_coupled=True,
)
def sft(batch: LogProbs) -> torch.Tensor:
    """-pc_i / mean(len_c): per-example values whose mean is the token-mean NLL of the chosen responses."""
    mean_length = batch.lengths[:, 0].to(batch.policy.dtype).mean().clamp(min=1.0)
    return -batch.policy[:, 0] / mean_length
