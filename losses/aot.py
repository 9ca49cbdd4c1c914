"""AOT (paired): alignment via optimal transport, first-order stochastic dominance of the margins.

Paper: Melnyk, Mroueh, Belgodere, Rigotti, Nitsure, Yurochkin, Greenewald, Navratil, Ross (2024).
"Distributional Preference Alignment of LLMs via Optimal Transport". arXiv:2406.05882, Sec. 3. As TRL 1.16
``loss_type="aot"``: sort the policy log-ratios pc - pr and the reference log-ratios rc - rr
*across the batch* independently, pair them by rank, and apply (label-smoothed) DPO to the sorted
differences:

    delta_(i) = sort(pc - pr)_(i) - sort(rc - rr)_(i)
    L_i = -(1 - eps) log sigma(beta delta_(i)) - eps log sigma(-beta delta_(i))

Because of the sort, L_i belongs to the i-th *rank*, not to example i (``batch_coupled``): only
the batch mean is meaningful, and permuting the batch leaves the output unchanged.
Defaults: beta = 0.1, epsilon = 0.0 (TRL's ``label_smoothing``).
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import chosen_rejected, smoothed_sigmoid_loss
from ._registry import register_loss


@register_loss(
    "aot",
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport",
    arxiv="2406.05882",
    trl_name="aot",
    ranges={"epsilon": (0, 0.5, "[]")},
    batch_coupled=True,
    example_weights=False,
)
def aot(batch: LogProbs, *, beta: float = 0.1, epsilon: float = 0.0) -> torch.Tensor:
    """Smoothed DPO on sort(pc - pr) - sort(rc - rr), sorted across the batch."""
    policy_chosen, policy_rejected = chosen_rejected(batch.policy)
    reference_chosen, reference_rejected = chosen_rejected(batch.reference)
    policy_sorted, _ = torch.sort(policy_chosen - policy_rejected, dim=0)
    reference_sorted, _ = torch.sort(reference_chosen - reference_rejected, dim=0)
    return smoothed_sigmoid_loss(policy_sorted - reference_sorted, beta, epsilon)  # AOT paired, sorted quantiles
