"""AOT (unpaired): optimal-transport alignment of the chosen and rejected reward distributions.

Paper: Melnyk et al. (2024). "Distributional Preference Alignment of LLMs via Optimal Transport".
arXiv:2406.05882. As TRL 1.16 ``loss_type="aot_unpaired"``: sort the chosen log-ratios pc - rc and
the rejected log-ratios pr - rr across the batch independently and apply (label-smoothed) DPO to
the rank-matched differences:

    delta_(i) = sort(pc - rc)_(i) - sort(pr - rr)_(i)
    L_i = -(1 - eps) log sigma(beta delta_(i)) - eps log sigma(-beta delta_(i))

Only the batch mean is meaningful (``batch_coupled``). Defaults: beta = 0.1, epsilon = 0.0.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import chosen_rejected, log_ratios, smoothed_sigmoid_loss
from ._registry import register_loss


@register_loss(
    "aot_unpaired",
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport",
    arxiv="2406.05882",
    trl_name="aot_unpaired",
    ranges={"epsilon": (0, 0.5, "[]")},
    batch_coupled=True,
    example_weights=False,
)
def aot_unpaired(batch: LogProbs, *, beta: float = 0.1, epsilon: float = 0.0) -> torch.Tensor:
    """Smoothed DPO on sort(pc - rc) - sort(pr - rr), sorted across the batch."""
    chosen, rejected = chosen_rejected(log_ratios(batch.policy, batch.reference))
    chosen_sorted, _ = torch.sort(chosen, dim=0)
    rejected_sorted, _ = torch.sort(rejected, dim=0)
    return smoothed_sigmoid_loss(chosen_sorted - rejected_sorted, beta, epsilon)  # AOT unpaired
