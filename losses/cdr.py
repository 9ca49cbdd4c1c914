"""CDR: soft-label DPO on density-ratio rewards of a strong-over-weak model pair.

Rewards from: Xu, Xu, Sudalairaj, Wang, Srivastava (2024). "CDR: Customizable Density Ratios of
Strong-over-weak LLMs for Preference Annotation". arXiv:2411.02481 (v3 retitled "Dr. SoW: Density
Ratio of Strong-over-weak LLMs for Reducing the Cost of Human Annotation in Preference Tuning"). The reward of a response is
r(x, y) = log pi_strong(y|x~) - log pi_weak(y|x~) (response tokens summed, no length
normalisation); annotation turns rewards into preferences. This loss uses the rewards as *soft*
labels instead of hard ones:

    p = sigma((score_c - score_r) / temperature)
    L = -[p log sigma(beta h) + (1 - p) log sigma(-beta h)]

so a pair whose rewards barely differ teaches little. ``scores`` holds the density-ratio rewards of
column 0 / column 1. Defaults: beta = 0.1, temperature = 1.0. As temperature -> 0 the labels harden
and the loss becomes DPO on the reward-ranked pair. The soft-label form is prefopt's; the paper
itself trains with hard (chosen = argmax reward) pairs, which is ``dpo`` or ``simpo`` on the
annotated data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._common import dpo_margin
from ._registry import register_loss


@register_loss(
    "cdr",
    paper="Xu et al. 2024, CDR: Customizable Density Ratios of Strong-over-weak LLMs for Preference Annotation",
    arxiv="2411.02481",
    requires=("scores",),
    ranges={"temperature": (0, None, "()")},
)
def cdr(batch: LogProbs, *, beta: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
    """-[p log sigma(beta h) + (1-p) log sigma(-beta h)], p = sigma((score_c - score_r)/temperature)."""
    margin = dpo_margin(batch)
    preference = torch.sigmoid((batch.scores[:, 0] - batch.scores[:, 1]) / temperature).to(margin.dtype)
    # soft-label Bradley-Terry cross-entropy with density-ratio labels
    return -(preference * F.logsigmoid(beta * margin) + (1 - preference) * F.logsigmoid(-beta * margin))
