"""Length-normalised DPO: the sigmoid loss on per-token log-ratios (TRL's ``sigmoid_norm``).

As TRL 1.16 ``loss_type="sigmoid_norm"`` (length-normalised DPO, used e.g. in the Tulu 3 recipe:
Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training",
arXiv:2411.15124):

    L = -log sigma(beta * ((pc - rc) / len_c - (pr - rr) / len_r))

Default beta = 0.1 (length-normalised margins are ~length times smaller than DPO's, so larger
betas are common in practice).
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import log_ratios, per_token, sigmoid_loss
from ._registry import register_loss


@register_loss(
    "sigmoid_norm",
    paper="Length-normalised DPO (Lambert et al. 2024, Tulu 3: Pushing Frontiers in Open Language Model "
    "Post-Training)",
    arxiv="2411.15124",
    requires=("lengths",),
    trl_name="sigmoid_norm",
    log_ratio_form=True,
)
def sigmoid_norm(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """-log sigma(beta * (per-token log-ratio of chosen - of rejected))."""
    average_ratios = per_token(log_ratios(batch.policy, batch.reference), batch.lengths)
    return sigmoid_loss(average_ratios[:, 0] - average_ratios[:, 1], beta)  # length-normalised DPO
