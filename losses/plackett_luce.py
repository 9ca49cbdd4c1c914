"""Plackett-Luce: the K-wise ranking likelihood on implicit rewards (DPO for ranked lists).

Sources: Rafailov et al. (2023), "Direct Preference Optimization", arXiv:2305.18290, Appendix A.3
(the Plackett-Luce form of DPO); Zhu, Jiao, Jordan (2023), "Principled Reinforcement Learning with
Human Feedback from Pairwise or K-wise Comparisons", arXiv:2301.11270 (the K-wise MLE). With
s_k = beta * (policy_k - reference_k) over a list ranked best (k = 1) to worst (k = K):

    L = -sum_k [ s_k - log sum_{j >= k} exp(s_j) ]

Masked columns (``mask`` False, when K varies inside a batch) are excluded from both the sum and
every normaliser. For K = 2 the loss is exactly DPO. Default beta = 0.1.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import log_ratios
from ._registry import register_loss


@register_loss(
    "plackett_luce",
    paper="Rafailov et al. 2023 (App. A.3); Zhu, Jiao, Jordan 2023, Principled Reinforcement Learning with Human "
    "Feedback from Pairwise or K-wise Comparisons",
    arxiv="2301.11270",
    responses="ranked",
)
def plackett_luce(batch: LogProbs, *, beta: float = 0.1) -> torch.Tensor:
    """-sum_k [s_k - log sum_{j>=k} exp(s_j)], s_k = beta*(policy_k - reference_k), ranked best first."""
    rewards = beta * log_ratios(batch.policy, batch.reference)
    mask = batch.mask if batch.mask is not None else torch.ones_like(rewards, dtype=torch.bool)
    # A very negative finite stand-in (not -inf) keeps masked columns out of every log-sum-exp while
    # keeping the backward pass free of inf - inf.
    excluded = torch.finfo(rewards.dtype).min / 4
    masked_rewards = rewards.masked_fill(~mask, excluded)
    # log sum_{j >= k} exp(s_j): a reversed cumulative log-sum-exp over the ranking
    tail_normaliser = torch.logcumsumexp(masked_rewards.flip(1), dim=1).flip(1)
    log_likelihood = torch.where(mask, masked_rewards - tail_normaliser, torch.zeros_like(rewards))
    return -log_likelihood.sum(dim=1)  # Plackett-Luce likelihood, DPO paper App. A.3
