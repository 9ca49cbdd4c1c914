"""f-DPG's running state: the per-prompt estimate of log Z, the baseline window, the proposal's bookkeeping.

All of it is checkpointed with the run (`FDPGState`, a `prefopt.training.state.LossStateCallback`), so a resumed
run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import torch

from prefopt.training.state import LossStateCallback


class LogPartitionEstimate:
    """Running importance-sampling estimate of log Z per key (prompt): log mean_q[P(y)/q(y)] over every sample
    seen, kept as (log of the sum of weights, count) so that weights of e^100 neither overflow nor lose digits."""

    def __init__(self):
        self.log_sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, key: str, log_weights: torch.Tensor) -> None:
        log_weights = log_weights.detach().double().flatten()
        if bool(torch.isnan(log_weights).any()):
            raise ValueError(f"f-DPG: a log importance weight log P(y) - log q(y) is NaN for prompt {key[:80]}")
        previous = torch.tensor(self.log_sums.get(key, -math.inf), dtype=torch.float64)
        self.log_sums[key] = torch.logsumexp(torch.cat([previous.view(1), log_weights]), 0).item()
        self.counts[key] = self.counts.get(key, 0) + log_weights.numel()

    def log_z(self, key: str) -> float:
        """The estimate (-inf while every sample of this key had P(y) = 0; nan before any sample)."""
        if key not in self.counts:
            return math.nan
        return self.log_sums[key] - math.log(self.counts[key])

    def state_dict(self) -> dict[str, Any]:
        return {"log_sums": dict(self.log_sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_sums, self.counts = dict(state["log_sums"]), dict(state["counts"])


class FDPGState(LossStateCallback):
    """f-DPG's running state: per-prompt log Z estimates, the baseline window of pseudo-rewards, and the
    proposal's bookkeeping (its weights when it is a separate model, the divergence accumulators that decide
    when the policy replaces it). `FDPGTrainer` adds one; it is checkpointed with the run."""

    def __init__(self, baseline_window: int = 1024):
        if baseline_window < 1:
            raise ValueError(f"baseline_window must be >= 1, got {baseline_window}")
        self.log_partition = LogPartitionEstimate()
        self.rewards: collections.deque = collections.deque(maxlen=baseline_window)
        self.proposal_divergence = [0.0, 0]  # sum of pointwise estimates of D(q || p), count
        self.policy_divergence = [0.0, 0]  # the same for the policy
        self.proposal_updates = 0
        self.trainer = None

    def bind_trainer(self, trainer) -> None:
        self.trainer = trainer

    @property
    def baseline(self) -> float:
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0

    def add_rewards(self, rewards: torch.Tensor) -> None:
        self.rewards.extend(float(value) for value in rewards.detach().double().flatten())

    def state_dict(self) -> dict[str, Any]:
        state = {
            "log_partition": self.log_partition.state_dict(),
            "rewards": list(self.rewards),
            "proposal_divergence": list(self.proposal_divergence),
            "policy_divergence": list(self.policy_divergence),
            "proposal_updates": self.proposal_updates,
        }
        proposal = getattr(self.trainer, "proposal", None)
        if proposal is not None:
            state["proposal"] = {name: tensor.detach().cpu().clone() for name, tensor in proposal.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_partition.load_state_dict(state["log_partition"])
        self.rewards.clear()
        self.rewards.extend(state["rewards"])
        self.proposal_divergence, self.policy_divergence = list(state["proposal_divergence"]), list(state["policy_divergence"])
        self.proposal_updates = state["proposal_updates"]
        proposal = getattr(self.trainer, "proposal", None)
        if proposal is not None:
            proposal.load_state_dict(state["proposal"])
