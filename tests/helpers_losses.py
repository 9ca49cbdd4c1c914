"""Batch builders for the loss tests: any registered loss gets a batch carrying every field it may read."""

from __future__ import annotations

import torch

from prefopt.losses import LogProbs, LossSpec

RESPONSES_FOR_TEST = {"pair": 2, "ranked": 3, "single": 1}
TRAINABLE_FIELDS = ("policy", "empty_policy", "calibration_policy")  # log-probs that depend on theta


def full_batch(
    spec: LossSpec,
    batch_size: int = 6,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    num_responses: int | None = None,
) -> LogProbs:
    """Random log-probs of magnitude ~scale for every LogProbs field; trainable ones require grad."""
    generator = torch.Generator().manual_seed(seed)
    k = num_responses or RESPONSES_FOR_TEST[spec.responses]

    def logps(*shape: int) -> torch.Tensor:
        return (-scale * torch.rand(*shape, generator=generator, dtype=torch.float64)).to(dtype)

    values = {
        "policy": logps(batch_size, k),
        "reference": logps(batch_size, k),
        "previous": logps(batch_size, k),
        "empty_policy": logps(batch_size, k),
        "empty_reference": logps(batch_size, k),
        "calibration_policy": logps(batch_size),
        "calibration_reference": logps(batch_size),
        "scores": (scale * torch.randn(batch_size, k, generator=generator, dtype=torch.float64)).to(dtype),
        "lengths": torch.randint(1, 50, (batch_size, k), generator=generator),
        "proposal": logps(batch_size, 1),
        "target": logps(batch_size, 1),
    }
    for name in TRAINABLE_FIELDS:
        values[name].requires_grad_(True)
    return LogProbs(**values)


def permuted(batch: LogProbs, order: torch.Tensor) -> LogProbs:
    """The same batch with its rows reordered."""
    fields = {}
    for name, value in vars(batch).items():
        fields[name] = None if value is None else value[order]
    return LogProbs(**fields)


def pair(policy, reference=None, **fields) -> LogProbs:
    """A LogProbs batch from nested lists (float64 so hand-worked values compare tightly)."""
    as_tensor = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    converted = {name: as_tensor(value) for name, value in fields.items()}
    if "mask" in fields:
        converted["mask"] = torch.tensor(fields["mask"], dtype=torch.bool)
    return LogProbs(policy=as_tensor(policy), reference=as_tensor(reference), **converted)
