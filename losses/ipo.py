"""IPO: identity preference optimisation, a squared loss on the (length-normalised) margin.

Paper: Azar et al. (2023). "A General Theoretical Paradigm
to Understand Learning from Human Preferences". arXiv:2310.12036, Eq. 17:

    L = (h_avg - 1 / (2 tau))^2,   h_avg = (pc - rc) / len_c - (pr - rr) / len_r

with tau passed as ``beta``. As in TRL 1.16 (``loss_type="ipo"``, confirmed there with the IPO
authors) the log-ratios are divided by the response token counts, so ``lengths`` is required.
Default beta = 0.1.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import log_ratios, per_token
from ._registry import register_loss


@register_loss(
    "ipo",
    paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arxiv="2310.12036",
    requires=("lengths",),
    trl_name="ipo",
    log_ratio_form=True,
)
def ipo(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """(h_avg - 1/(2 beta))^2 with per-token log-ratios (TRL's length normalisation)."""
    average_ratios = per_token(log_ratios(batch.policy, batch.reference), batch.lengths)
    return (average_ratios[:, 0] - average_ratios[:, 1] - 1 / (2 * beta)) ** 2  # Eq. 17 of Azar et al. 2023
