"""RPO: DPO plus an SFT regulariser on the chosen (or another baseline) response.

Paper: Liu, Lu, Zhang, Liu, Guo, Yang, Blanchet, Wang (2024, NeurIPS). "Provably Mitigating Overoptimization in
RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer". arXiv:2405.16436, Sec. 4 ("An
Equivalent and Implementation-friendly Objective"). The practical RPO objective adds an SFT (negative log-likelihood) term on a baseline response to DPO:

    variant "sum":  L = dpo + eta * beta * (-pc)
    variant "mean": L = dpo + eta * (-pc / len_c)     (token-mean NLL, as in the authors' code option)

Defaults: beta = 0.1, eta = 0.005, variant = "sum" (both variants exist in the official code).
The SFT target is column 0 (the chosen response) of ``batch.policy``; to regularise towards a
different baseline response, the trainer puts that response's log-prob in column 0 of a separate
batch or a dataset column. eta = 0 is DPO.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import dpo_margin, per_token, sigmoid_loss
from ._registry import register_loss


@register_loss(
    "rpo",
    paper="Liu et al. 2024, Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an "
    "Adversarial Regularizer",
    arxiv="2405.16436",
    choices={"variant": ("sum", "mean")},
    ranges={"eta": (0, None, "[)")},  # eta weighs the SFT term
)
def rpo(batch: LogProbs, *, beta: float = 0.1, eta: float = 0.005, variant: str = "sum") -> torch.Tensor:
    """dpo + eta*beta*(-pc) ("sum") or dpo + eta*(-pc/len_c) ("mean"): DPO with an SFT regulariser."""
    chosen_nll = -batch.policy[:, 0]
    if variant == "mean":
        if batch.lengths is None:
            raise ValueError("loss 'rpo' with variant='mean' needs LogProbs.lengths, which is None")
        return sigmoid_loss(dpo_margin(batch), beta) + eta * per_token(chosen_nll, batch.lengths[:, 0])
    return sigmoid_loss(dpo_margin(batch), beta) + eta * beta * chosen_nll  # RPO objective (Liu et al. 2024)
