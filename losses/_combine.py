"""Weighted sums of registered losses, as TRL's ``loss_type`` + ``loss_weights`` (e.g. DPO + 0.5 SFT)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from ._batch import LogProbs
from ._registry import LossSpec, get_loss


@dataclass(frozen=True)
class WeightedLoss:
    """sum_i weight_i * loss_i(batch): per-example values of shape [B], like a single loss.

    Hyper-parameters given as keywords go to every component that accepts them (so ``beta`` reaches
    all of them, as TRL's shared ``beta`` does); ``per_loss={"rpo": {"eta": 0.1}}`` sets one
    component's. A keyword that no component accepts raises.
    """

    components: tuple[tuple[LossSpec, float], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec, _ in self.components)

    @property
    def needs_reference(self) -> bool:
        return any(spec.needs_reference for spec, _ in self.components)

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(field for spec, _ in self.components for field in spec.required_fields))

    @property
    def responses(self) -> str:
        kinds = {spec.responses for spec, _ in self.components}
        return "ranked" if kinds == {"ranked"} else kinds.pop() if len(kinds) == 1 else "pair"

    @property
    def kwise(self) -> bool:
        return self.responses == "ranked"

    def component_hyperparameters(
        self, per_loss: Mapping[str, Mapping[str, Any]] | None = None, **shared: Any
    ) -> dict[str, dict[str, Any]]:
        """The validated hyper-parameters each component will be called with."""
        per_loss = dict(per_loss or {})
        unknown_components = sorted(set(per_loss) - set(self.names))
        if unknown_components:
            raise ValueError(f"per_loss names {unknown_components}, which are not in this combination {list(self.names)}")
        accepted_anywhere = {name for spec, _ in self.components for name in spec.hyperparameters}
        unused = sorted(set(shared) - accepted_anywhere)
        if unused:
            raise TypeError(
                f"hyper-parameter(s) {unused} are accepted by none of {list(self.names)}; "
                f"accepted: {sorted(accepted_anywhere)}"
            )
        resolved = {}
        for spec, _ in self.components:
            mine = {k: v for k, v in shared.items() if k in spec.hyperparameters}
            mine.update(per_loss.get(spec.name, {}))
            resolved[spec.name] = spec.resolve_hyperparameters(**mine)
        return resolved

    def components_per_example(
        self, batch: LogProbs, per_loss: Mapping[str, Mapping[str, Any]] | None = None, **shared: Any
    ) -> dict[str, torch.Tensor]:
        """Each component's unweighted per-example loss, by name (for logging)."""
        hyperparameters = self.component_hyperparameters(per_loss, **shared)
        return {spec.name: spec(batch, **hyperparameters[spec.name]) for spec, _ in self.components}

    def __call__(
        self, batch: LogProbs, per_loss: Mapping[str, Mapping[str, Any]] | None = None, **shared: Any
    ) -> torch.Tensor:
        values = self.components_per_example(batch, per_loss, **shared)
        return sum(weight * values[spec.name] for spec, weight in self.components)


def combine_losses(losses: str | Mapping[str, float] | Iterable[str | tuple[str, float]]) -> WeightedLoss:
    """A `WeightedLoss` from ``"dpo"``, ``{"dpo": 1.0, "sft": 0.5}``, ``[("dpo", 1.0), ("sft", 0.5)]`` or
    ``["dpo", "sft"]`` (weight 1.0 each, as TRL when ``loss_weights`` is unset)."""
    if isinstance(losses, str):
        items = [(losses, 1.0)]
    elif isinstance(losses, Mapping):
        items = list(losses.items())
    else:
        items = [(item, 1.0) if isinstance(item, str) else tuple(item) for item in losses]
    if not items:
        raise ValueError("combine_losses needs at least one loss")
    components, seen = [], set()
    for item in items:
        if len(item) != 2:
            raise ValueError(f"each loss must be a name or a (name, weight) pair, got {item!r}")
        name, weight = item
        spec = get_loss(name)
        if name in seen:
            raise ValueError(f"loss {name!r} appears more than once in the combination; give it once with its total weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"weight of loss {name!r} must be a finite number, got {weight!r}")
        seen.add(name)
        components.append((spec, float(weight)))
    kinds = {spec.responses for spec, _ in components}
    if "single" in kinds and len(kinds) > 1:
        raise ValueError(
            f"cannot combine single-sample losses with pairwise/ranked ones: {[s.name for s, _ in components]}"
        )
    return WeightedLoss(tuple(components))
