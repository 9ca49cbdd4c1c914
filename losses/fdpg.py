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

Numerical safety (prefopt's choice, not in the paper): the log importance weight and, for ``kl``,
the log of the density ratio are clipped to at most 30 (weights above e^30 ~ 1e13 are truncated,
i.e. truncated importance sampling), so a sample far outside q cannot produce inf or NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._batch import LogProbs
from ._registry import register_loss

_LOG_CLIP = 30.0


def _negative_f_prime(log_t: torch.Tensor, divergence: str) -> torch.Tensor:
    """R = -f'(t) for the supported divergences, from lt = log t."""
    if divergence == "kl":
        return torch.exp(torch.clamp(-log_t, max=_LOG_CLIP))
    if divergence == "rkl":
        return -(log_t + 1)
    if divergence == "tv":
        return -torch.sign(log_t) / 2
    return -(math.log(2) - F.softplus(-log_t))  # js


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
    """Surrogate -stopgrad[w (R - baseline)] * policy, w = pi/q, R = -f'(pi/p): f-DPG's gradient estimator."""
    policy = batch.policy[:, 0]
    with torch.no_grad():
        log_weight = torch.clamp(policy - batch.proposal[:, 0], max=_LOG_CLIP)
        log_t = policy - (batch.target[:, 0] - log_z)
        advantage = _negative_f_prime(log_t, divergence) - baseline
        coefficient = torch.exp(log_weight) * advantage
    return -coefficient * policy  # f-DPG policy-gradient surrogate (Go et al. 2023)
