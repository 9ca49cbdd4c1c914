"""f-DPO: DPO under an f-divergence regulariser instead of the reverse KL.

Paper: Wang, Jiang, Yang, Liu, Chen (2023). "Beyond Reverse KL: Generalizing Direct Preference
Optimization with Diverse Divergence Constraints". arXiv:2309.16240, Theorem 1 / Eq. 12: with an
f-divergence regulariser the implicit reward of a response is beta * f'(pi(y|x) / pi_ref(y|x)), so
every log-ratio ``log t = log pi - log pi_ref`` of a loss is replaced by f'(t):

    reverse_kl        f'(t) = log t                      (standard DPO)
    forward_kl        f'(t) = 1 - 1/t
    js_divergence     f'(t) = log(2t / (t + 1)) = log 2 + log sigma(log t)
    alpha_divergence  f'(t) = (t^(alpha - 1) - 1) / (alpha - 1)   (log t in the limit alpha -> 1)

Same names, values and numerical guards as TRL 1.16's ``f_divergence_type`` /
``f_alpha_divergence_coef`` (the exponent of the alpha case is clamped at 80 in float32/bfloat16
and 11 in float16 so exp() stays finite). The log Z(x) term of the reparameterisation only cancels
in a chosen-minus-rejected difference, so f-DPO applies to losses that read policy and reference
only through their log-ratios (registered with ``log_ratio_form=True``); losses needing no reference
(e.g. ``sft``) are unaffected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from ._batch import LogProbs

_EXPONENT_CLAMP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 80.0}


def _reverse_kl(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return log_ratio


def _forward_kl(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return 1 - torch.exp(-log_ratio)  # f'(t) = 1 - 1/t


def _js_divergence(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return math.log(2) + F.logsigmoid(log_ratio)  # f'(t) = log(2t / (t + 1))


def _alpha_divergence(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    if abs(alpha - 1.0) < 1e-6:  # f'(t) -> log t as alpha -> 1
        return log_ratio
    compute_dtype = torch.promote_types(log_ratio.dtype, torch.float32)  # as TRL: exp() in at least float32
    exponent = torch.clamp(((alpha - 1.0) * log_ratio).to(compute_dtype), max=_EXPONENT_CLAMP[log_ratio.dtype])
    return (torch.exp(exponent) - 1.0).to(log_ratio.dtype) / (alpha - 1.0)  # f'(t) = (t^(a-1) - 1) / (a-1)


# name -> f'(t) as a function of log t and the alpha coefficient (used by "alpha_divergence" only)
F_DIVERGENCES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reverse_kl": _reverse_kl,
    "forward_kl": _forward_kl,
    "js_divergence": _js_divergence,
    "alpha_divergence": _alpha_divergence,
}


def f_prime(log_ratio: torch.Tensor, divergence: str, alpha: float = 1.0) -> torch.Tensor:
    """f'(t) of ``divergence`` at log t = ``log_ratio``, elementwise."""
    if divergence not in F_DIVERGENCES:
        raise ValueError(f"Unknown f_divergence_type: {divergence}; choose one of {list(F_DIVERGENCES)}")
    return F_DIVERGENCES[divergence](log_ratio, alpha)


def apply_f_divergence(batch: LogProbs, divergence: str, alpha: float = 1.0) -> LogProbs:
    """``batch`` with each log-ratio replaced by f'(t): policy := f'(policy - reference), reference := 0.

    A loss registered with ``log_ratio_form=True`` then computes its f-DPO value unchanged."""
    if divergence == "reverse_kl":
        return batch
    if batch.reference is None:
        raise ValueError(f"f_divergence_type={divergence!r} needs LogProbs.reference (the log-ratios), which is None")
    scores = f_prime(batch.policy - batch.reference, divergence, alpha)
    return dataclasses.replace(batch, policy=scores, reference=torch.zeros_like(scores))
