"""f-DPG: distributional policy gradients for any f-divergence to a target distribution.

Paper: Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman (2023). "Aligning Language Models with
Preferences through f-divergence Minimization". arXiv:2302.08215 (reference code: naver/disco).
The policy pi_theta is moved towards p(y) = P(y) / Z, P an unnormalised target (e.g.
pi_ref(y) exp(r(y)/beta), or a(y) b(y) for a binary constraint b). With samples y ~ q:

    grad = E_q[ (pi_theta(y)/q(y)) * (-f'(pi_theta(y)/p(y)) - baseline) * grad log pi_theta(y) ]

This function returns the per-sample *surrogate* whose gradient is that estimator,

    L = -stopgrad[w * (R - baseline)] * policy,   w = exp(policy - proposal),
    R = -f'(t),  log t = policy - (target - log_z)

with f'(t) written in lt = log t: kl (forward KL, DPG): -exp(-lt); rkl: lt + 1; tv: sign(lt)/2;
js: log 2 - softplus(-lt). Its *value* is not a divergence; only its gradient is meaningful.
Defaults: divergence = "js", log_z = 0.0, baseline = 0.0. The trainer owns the running estimates:
an importance-sampling estimate of Z = mean_q[P(y)/q(y)] passed as ``log_z`` and a moving average
of R passed as ``baseline``.

Numerical safety (prefopt's choice, not in the paper): the log importance weight is clipped to at
most 30 (weights above e^30 ~ 1e13 are truncated, i.e. truncated importance sampling) and the log
density ratio lt to [-30, 30], so a sample far outside q, or outside the target's support
(P(y) = 0 under a constraint, lt = +inf), cannot produce inf or NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._registry import register_loss

_LOG_CLIP = 30.0


def pseudo_reward(log_t: torch.Tensor, divergence: str) -> torch.Tensor:
    """R = -f'(t) for the supported divergences, from lt = log t = log pi(y) - log p(y).

    lt is clipped to [-30, 30] first (p(y) = 0, i.e. lt = +inf, stays finite: rkl's R = -(lt + 1) would be -inf)."""
    log_t = torch.clamp(log_t, min=-_LOG_CLIP, max=_LOG_CLIP)
    if divergence == "kl":
        return torch.exp(-log_t)
    if divergence == "rkl":
        return -(log_t + 1)
    if divergence == "tv":
        return -torch.sign(log_t) / 2
    return -(math.log(2) - F.softplus(-log_t))  # js


def pointwise_divergence(log_model: torch.Tensor, log_target: torch.Tensor, log_proposal: torch.Tensor, divergence: str) -> torch.Tensor:
    """Importance-sampling terms whose mean over y ~ q estimates D_f(pi || p) = E_p[f(pi/p)]:
    (p/q) f(pi/p), with log p = ``log_target`` normalised (log P - log Z) and f the divergence's generator
    (kl: -log t, i.e. KL(p||pi); rkl: t log t, i.e. KL(pi||p); tv: |t - 1|/2; js: t log(2t/(1+t)) + log(2/(1+t))).
    Samples with p(y) = 0 contribute what pi puts there (rkl: clipped at log t = 30; tv: pi/q/2; js: (pi/q) log 2)."""
    log_target = torch.where(torch.isfinite(log_target), log_target, torch.full_like(log_target, -float("inf")))
    target_weight = torch.exp(torch.clamp(log_target - log_proposal, max=_LOG_CLIP))  # p/q, 0 where p = 0
    model_weight = torch.exp(torch.clamp(log_model - log_proposal, max=_LOG_CLIP))  # pi/q
    log_t = torch.clamp(log_model - log_target, min=-_LOG_CLIP, max=_LOG_CLIP)
    if divergence == "kl":
        return torch.where(target_weight > 0, target_weight * -log_t, torch.zeros_like(log_t))
    if divergence == "rkl":
        return model_weight * log_t
    if divergence == "tv":
        return (model_weight - target_weight).abs() / 2
    return model_weight * (math.log(2) - F.softplus(-log_t)) + target_weight * (math.log(2) - F.softplus(log_t))  # js


@register_loss(
    "fdpg",
    paper="Go et al. 2023, Aligning Language Models with Preferences through f-divergence Minimization",
    arxiv="2302.08215",
    needs_reference=False,
    responses="single",
    requires=("proposal", "target"),
    choices={"divergence": ("js", "kl", "rkl", "tv")},
)
def fdpg(batch: LogProbs, *, divergence: str = "js", log_z: float = 0.0, baseline: float = 0.0) -> torch.Tensor:
    """Surrogate -stopgrad[w (R - baseline)] * policy, w = pi/q, R = -f'(pi/p): f-DPG's gradient estimator.

    ``log_z`` may be a number or a [B] tensor (one estimate per example: a conditional target has one
    partition function per prompt)."""
    policy = batch.policy[:, 0]
    with torch.no_grad():
        log_weight = torch.clamp(policy - batch.proposal[:, 0], max=_LOG_CLIP)
        log_t = policy - (batch.target[:, 0] - log_z)
        advantage = pseudo_reward(log_t, divergence) - baseline
        coefficient = torch.exp(log_weight) * advantage
    return -coefficient * policy  # f-DPG policy-gradient surrogate (Go et al. 2023)
