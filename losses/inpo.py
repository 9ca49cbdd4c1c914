"""INPO: iterative Nash policy optimisation (one round's loss).

Paper: Zhang, Yu, Peng, Song, Tian, Huo, Jiang, Mi, Yu (2024, ICLR 2025). "Iterative Nash Policy
Optimization: Aligning LLMs with General Preferences via No-Regret Learning". arXiv:2407.00617.
Form taken from the authors' code (an IPO-style squared loss against a geometric mixture of the
reference and the previous iterate pi_t):

    h_t = (pc - pr) - ratio * (rc - rr) - (1 - ratio) * (prev_c - prev_r)
    L   = (h_t - 1 / (2 eta))^2

Defaults: eta = 0.005 (so the target margin 1/(2 eta) = 100), ratio = 1/3. In iteration 1 the
previous iterate is the reference, h_t = h and the loss is IPO-like. INPO is iterative: each round
samples responses from pi_t, ranks them with a preference oracle, precomputes reference and pi_t
log-probs (``LogProbs.previous``) and trains pi_{t+1} from pi_t; the rounds are the trainer's job.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._registry import register_loss


@register_loss(
    "inpo",
    paper="Zhang et al. 2024, Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via "
    "No-Regret Learning",
    arxiv="2407.00617",
    requires=("previous",),
    ranges={"eta": (0, None, "()"), "ratio": (0, 1, "[]")},  # eta: a step size; ratio mixes reference and previous iterate
)
def inpo(batch: LogProbs, *, eta: float = 0.005, ratio: float = 1 / 3) -> torch.Tensor:
    """(h_t - 1/(2 eta))^2 with h_t measured against ratio*reference + (1-ratio)*previous iterate."""
    policy_margin = batch.policy[:, 0] - batch.policy[:, 1]
    reference_margin = batch.reference[:, 0] - batch.reference[:, 1]
    previous_margin = batch.previous[:, 0] - batch.previous[:, 1]
    margin = policy_margin - ratio * reference_margin - (1 - ratio) * previous_margin
    return (margin - 1 / (2 * eta)) ** 2  # INPO loss (authors' code)
