"""Weighted sums of registered losses, as TRL's ``loss_type`` + ``loss_weights`` (e.g. DPO + 0.5 SFT)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from ._batch import LogProbs
from ._registry import LossSpec, get_loss, list_losses
from .f_divergence import F_DIVERGENCES, apply_f_divergence


@dataclass(frozen=True)
class WeightedLoss:
    """sum_i weight_i * loss_i(batch): per-example values of shape [B], like a single loss.

    Hyper-parameters given as keywords go to every component that accepts them (so ``beta`` reaches
    all of them, as TRL's shared ``beta`` does); ``per_loss={"rpo": {"eta": 0.1}}`` sets one
    component's. A keyword that no component accepts raises.

    Two modifiers act on every component, as TRL's do on every ``loss_type``:
    ``f_divergence`` (f-DPO, `prefopt.losses.f_divergence`) replaces the log-ratios seen by the
    components registered with ``log_ratio_form=True`` (components needing no reference see the batch
    unchanged); and ``batch.weights`` (WPO), when given, multiplies each example's value by the product
    of its real responses' weights.
    """

    components: tuple[tuple[LossSpec, float], ...]
    f_divergence: str = "reverse_kl"
    f_alpha_divergence_coef: float = 1.0

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
        example_weights = None
        if batch.weights is not None:
            weights = batch.weights if batch.mask is None else batch.weights.masked_fill(~batch.mask, 1.0)
            example_weights = weights.prod(dim=1)
        values = {}
        for spec, _ in self.components:
            view = batch
            if spec.log_ratio_form:
                view = apply_f_divergence(batch, self.f_divergence, self.f_alpha_divergence_coef)
            value = spec(view, **hyperparameters[spec.name])
            if example_weights is not None:
                if not spec.example_weights:
                    raise NotImplementedError(
                        f"WPO-style weighting is not implemented for {spec.name!r} because it sorts samples, which "
                        "would misalign per-pair weights."
                    )
                value = value * example_weights.to(value.dtype)
            values[spec.name] = value
        return values

    def __call__(
        self, batch: LogProbs, per_loss: Mapping[str, Mapping[str, Any]] | None = None, **shared: Any
    ) -> torch.Tensor:
        values = self.components_per_example(batch, per_loss, **shared)
        return sum(weight * values[spec.name] for spec, weight in self.components)


def combine_losses(
    losses: str | Mapping[str, float] | Iterable[str | tuple[str, float]],
    *,
    f_divergence: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
) -> WeightedLoss:
    """A `WeightedLoss` from ``"dpo"``, ``{"dpo": 1.0, "sft": 0.5}``, ``[("dpo", 1.0), ("sft", 0.5)]`` or
    ``["dpo", "sft"]`` (weight 1.0 each, as TRL when ``loss_weights`` is unset).

    ``f_divergence`` (one of `F_DIVERGENCES`, TRL's ``f_divergence_type``) and ``f_alpha_divergence_coef``
    make it f-DPO; every component must then be in log-ratio form or need no reference."""
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
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight of loss {name!r} must be a finite number > 0, got {weight!r}")
        seen.add(name)
        components.append((spec, float(weight)))
    kinds = {spec.responses for spec, _ in components}
    if "single" in kinds and len(kinds) > 1:
        raise ValueError(
            f"cannot combine single-sample losses with pairwise/ranked ones: {[s.name for s, _ in components]}"
        )
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"Unknown f_divergence_type: {f_divergence}; choose one of {list(F_DIVERGENCES)}")
    if f_divergence != "reverse_kl":
        supported = [name for name in list_losses() if get_loss(name).log_ratio_form or not get_loss(name).needs_reference]
        unsupported = [spec.name for spec, _ in components if spec.needs_reference and not spec.log_ratio_form]
        if unsupported:
            raise ValueError(
                f"`f_divergence_type='{f_divergence}'` is only supported for the following loss types: {supported}. "
                f"You provided {unsupported}. Use the default `f_divergence_type='reverse_kl'` with these losses "
                "(f-DPO's log Z(x) term only cancels for losses registered with log_ratio_form=True)."
            )
    return WeightedLoss(tuple(components), f_divergence, float(f_alpha_divergence_coef))

