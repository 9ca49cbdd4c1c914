"""`LogProbs`: the one input every registered loss takes.

All values are *sequence* log-probabilities: the sum of the response tokens' log-probs, prompt
tokens excluded. Column 0 is the most preferred response and columns are ranked best to worst, so
a preference pair is the K = 2 case (column 0 = chosen, column 1 = rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Which shape each optional field must have, relative to policy's [B, K].
_PER_RESPONSE = ("reference", "lengths", "mask", "previous", "empty_policy", "empty_reference", "scores", "weights")
_PER_EXAMPLE = ("calibration_policy", "calibration_reference")  # [B]
_PER_SAMPLE = ("proposal", "target")  # [B, 1]


@dataclass(frozen=True)
class LogProbs:
    """A batch of sequence log-probabilities for B prompts with K ranked responses each.

    Fields (shapes):
        policy:                [B, K] log pi_theta(y_k|x); column 0 = most preferred
        reference:             [B, K] log pi_ref(y_k|x); None for reference-free losses
        lengths:               [B, K] response token counts
        mask:                  [B, K] bool, True for real columns when K varies inside a batch
        previous:              [B, K] log pi_t(y_k|x) under the previous iterate (INPO)
        calibration_policy:    [B]    log pi_theta(y_cal|x), y_cal ~ pi_cal (VPO)
        calibration_reference: [B]    log pi_ref(y_cal|x)
        empty_policy:          [B, K] answers scored with an empty reasoning trace (BVPO)
        empty_reference:       [B, K]
        scores:                [B, K] rewards of each response (CDR soft labels)
        proposal:              [B, 1] log q(y) of the sampling distribution (f-DPG)
        target:                [B, 1] log P(y) of the unnormalised target (f-DPG)
        weights:               [B, K] per-response weights (WPO); a loss's value for example b is multiplied
                               by the product of its real responses' weights (see `WeightedLoss`)
    """

    policy: torch.Tensor
    reference: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    calibration_policy: torch.Tensor | None = None
    calibration_reference: torch.Tensor | None = None
    empty_policy: torch.Tensor | None = None
    empty_reference: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    proposal: torch.Tensor | None = None
    target: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"LogProbs.{field.name} must be a torch.Tensor or None, got {type(value).__name__}")
        if self.policy.dim() != 2:
            raise ValueError(
                f"LogProbs.policy must have shape [B, K] (batch, responses ranked best first), "
                f"got shape {tuple(self.policy.shape)}; for one pair per row stack [chosen, rejected] as K = 2"
            )
        batch_size, num_responses = self.policy.shape
        expected = {name: (batch_size, num_responses) for name in _PER_RESPONSE}
        expected.update({name: (batch_size,) for name in _PER_EXAMPLE})
        expected.update({name: (batch_size, 1) for name in _PER_SAMPLE})
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"LogProbs.{name} has shape {tuple(value.shape)} but policy has shape "
                    f"{tuple(self.policy.shape)}, so {name} must have shape {shape}"
                )
        if self.mask is not None:
            if self.mask.dtype != torch.bool:
                raise TypeError(f"LogProbs.mask must be a bool tensor, got dtype {self.mask.dtype}")
            real_columns = self.mask.sum(dim=1)
            if bool((real_columns < min(2, num_responses)).any()):
                row = int(torch.nonzero(real_columns < min(2, num_responses))[0, 0])
                raise ValueError(
                    f"LogProbs.mask row {row} has {int(real_columns[row])} real column(s); "
                    "every row needs at least 2 responses to rank"
                )

    @property
    def batch_size(self) -> int:
        return self.policy.shape[0]

    @property
    def num_responses(self) -> int:
        return self.policy.shape[1]

    @classmethod
    def from_pairs(
        cls,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        reference_chosen: torch.Tensor | None = None,
        reference_rejected: torch.Tensor | None = None,
        **pairs: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None,
    ) -> "LogProbs":
        """Build a K = 2 batch from [B] tensors, TRL style (chosen / rejected kept apart).

        Other per-response fields go in as (chosen, rejected) tuples, e.g.
        ``lengths=(chosen_lengths, rejected_lengths)``; per-example fields as plain tensors.
        """
        stacked = {}
        for name, value in pairs.items():
            if isinstance(value, tuple):
                value = torch.stack(value, dim=1)
            stacked[name] = value
        reference = None
        if reference_chosen is not None or reference_rejected is not None:
            if reference_chosen is None or reference_rejected is None:
                raise ValueError("give both reference_chosen and reference_rejected, or neither")
            reference = torch.stack([reference_chosen, reference_rejected], dim=1)
        return cls(policy=torch.stack([policy_chosen, policy_rejected], dim=1), reference=reference, **stacked)


LOGPROBS_FIELDS = tuple(field.name for field in fields(LogProbs))
# Fields where -inf is a value, not an error: log 0, a response the target gives no mass (f-DPG's constrained
# target P(y) = a(y) b(y) with b(y) = 0). NaN and +inf are refused there as everywhere.
LOG_ZERO_FIELDS = ("target",)


def invalid_values(name: str, values: torch.Tensor) -> torch.Tensor:
    """Where ``values`` of field ``name`` are not valid numbers: NaN or +-inf (-inf allowed in `LOG_ZERO_FIELDS`)."""
    values = values.detach()
    if name in LOG_ZERO_FIELDS:
        return values.isnan() | (values == float("inf"))
    return ~torch.isfinite(values)
