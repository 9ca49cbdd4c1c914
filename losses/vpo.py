"""VPO: value-incentivised preference optimisation (offline pessimism / online optimism).

Paper: Cen, Mei, Goshvadi, Dai, Yang, Yang, Schuurmans, Chi, Dai (2024, ICLR 2025).
"Value-Incentivized Preference Optimization: A Unified Approach to Online and Offline RLHF".
arXiv:2405.19320.

VPO regularises the reward-learning objective with the value of the policy,
``sign * alpha * E_x[max_pi J(r, pi)]``. Under DPO's reparameterisation r = beta log(pi/pi_ref)
and the paper's reward calibration E_{y ~ pi_cal}[r(x, y)] = 0, the value term reduces (up to
terms constant in theta) to beta * E_{y_cal ~ pi_cal}[log pi(y_cal) - log pi_ref(y_cal)]. The
per-example loss used here is therefore

    L = -log sigma(beta h) + sign * alpha * beta * (cal_policy - cal_reference)

with sign = -1 for ``mode="offline"`` (pessimism: push up the likelihood of calibration responses)
and sign = +1 for ``mode="online"`` (optimism: push it down, encouraging exploration). This closed
form is *derived* by prefopt from the paper's objective; it is not an equation printed in the paper.
Offline, when no calibration response is given, the chosen response plays y_cal (pi_cal = the data
distribution of preferred responses), i.e. (pc, rc). Online mode needs real samples y_cal ~ pi_cal
(default pi_cal = pi_ref), drawn each round by the online trainer. Defaults: beta = 0.1,
alpha = 0.1, mode = "offline". alpha = 0 is DPO.
"""

from __future__ import annotations

import torch

from ._batch import LogProbs
from ._common import dpo_margin, sigmoid_loss
from ._registry import register_loss

_SIGN = {"offline": -1.0, "online": 1.0}


@register_loss(
    "vpo",
    paper="Cen et al. 2024, Value-Incentivized Preference Optimization: A Unified Approach to Online and "
    "Offline RLHF",
    arxiv="2405.19320",
    choices={"mode": tuple(_SIGN)},
    ranges={"alpha": (0, None, "[)")},  # alpha weighs the value term
)
def vpo(batch: LogProbs, *, beta: float = 0.1, alpha: float = 0.1, mode: str = "offline") -> torch.Tensor:
    """dpo + sign*alpha*beta*(cal_policy - cal_reference); sign -1 offline (pessimism), +1 online (optimism)."""
    has_calibration = batch.calibration_policy is not None and batch.calibration_reference is not None
    if has_calibration:
        calibration_ratio = batch.calibration_policy - batch.calibration_reference
    elif mode == "offline":
        calibration_ratio = batch.policy[:, 0] - batch.reference[:, 0]  # chosen response stands in for y_cal
    else:
        raise ValueError(
            "loss 'vpo' with mode='online' needs LogProbs.calibration_policy and calibration_reference "
            "(log-probs of y_cal sampled from pi_cal each round), which are None"
        )
    # value-regularised DPO: Cen et al. 2024 objective with E_{pi_cal}[r] = 0 (derived form, see module docstring)
    return sigmoid_loss(dpo_margin(batch), beta) + _SIGN[mode] * alpha * beta * calibration_ratio
