"""The loss registry: the single source of loss names, capabilities and hyper-parameter defaults.

A loss is a pure function ``fn(batch: LogProbs, *, hp1=default1, ...) -> Tensor[B]``. Its
hyper-parameters and their defaults are read from the keyword-only arguments of its signature, so
the function is the one place where a default is written. ``register_loss`` stores a frozen
`LossSpec`; the trainer, the CLI help, the README table and the tests all read the specs.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from ._batch import LOGPROBS_FIELDS, LogProbs

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_RESPONSES = {
    "pair": "exactly 2 responses per example (chosen, rejected)",
    "ranked": "2 or more responses per example, ranked best first",
    "single": "1 sampled response per example",
}
_REGISTRY: dict[str, "LossSpec"] = {}


@dataclass(frozen=True)
class LossSpec:
    """Everything the rest of prefopt may know about a loss. Call it like the loss function."""

    name: str
    function: Callable[..., torch.Tensor] = field(repr=False)
    needs_reference: bool
    responses: str  # "pair" | "ranked" | "single"
    required_fields: tuple[str, ...]
    hyperparameters: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]]
    paper: str
    arxiv: str | None
    summary: str
    trl_name: str | None = None  # the TRL 1.16 DPOConfig.loss_type computing the same value
    batch_coupled: bool = False  # one example's loss depends on the other examples of the batch
    log_ratio_form: bool = False  # reads policy/reference only through log pi - log pi_ref (f-DPO applies)
    example_weights: bool = True  # per-example weights (WPO) may scale its values (False: values belong to ranks)

    @property
    def kwise(self) -> bool:
        """Whether the loss accepts K > 2 ranked responses per example."""
        return self.responses == "ranked"

    def resolve_hyperparameters(self, **hyperparameters: Any) -> dict[str, Any]:
        """Defaults overlaid with ``hyperparameters``, validated; raises on unknown names or bad values."""
        unknown = sorted(set(hyperparameters) - set(self.hyperparameters))
        if unknown:
            accepted = ", ".join(f"{k} (default {v!r})" for k, v in self.hyperparameters.items()) or "none"
            raise TypeError(f"loss {self.name!r} got unknown hyper-parameter(s) {unknown}; it accepts: {accepted}")
        resolved = {**self.hyperparameters, **hyperparameters}
        if "beta" in resolved:
            beta = resolved["beta"]
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
                raise ValueError(f"loss {self.name!r}: beta must be a finite number > 0, got {beta!r}")
        for name, allowed in self.choices.items():
            if resolved[name] not in allowed:
                raise ValueError(f"loss {self.name!r}: {name} must be one of {list(allowed)}, got {resolved[name]!r}")
        return resolved

    def check_batch(self, batch: LogProbs) -> None:
        """Raise a ValueError naming the problem when ``batch`` cannot feed this loss."""
        if not isinstance(batch, LogProbs):
            raise TypeError(f"loss {self.name!r} takes a prefopt.losses.LogProbs batch, got {type(batch).__name__}")
        for name in self.required_fields:
            if getattr(batch, name) is None:
                raise ValueError(f"loss {self.name!r} needs LogProbs.{name}, which is None")
        num_responses = batch.num_responses
        if self.responses == "pair" and num_responses != 2:
            hint = (
                "; split K-wise data into pairs with prefopt.data.to_pairs or use a K-wise loss such as "
                "'plackett_luce'"
                if num_responses > 2
                else ""
            )
            raise ValueError(
                f"loss {self.name!r} is pairwise and needs K = 2 responses per example, got K = {num_responses}{hint}"
            )
        if self.responses == "ranked" and num_responses < 2:
            raise ValueError(f"loss {self.name!r} ranks responses and needs K >= 2, got K = {num_responses}")
        if self.responses == "single" and num_responses != 1:
            raise ValueError(f"loss {self.name!r} takes one sampled response per example (K = 1), got K = {num_responses}")

    def __call__(self, batch: LogProbs, **hyperparameters: Any) -> torch.Tensor:
        resolved = self.resolve_hyperparameters(**hyperparameters)
        self.check_batch(batch)
        per_example = self.function(batch, **resolved)
        if not isinstance(per_example, torch.Tensor) or tuple(per_example.shape) != (batch.batch_size,):
            shape = tuple(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example).__name__
            raise ValueError(f"loss {self.name!r} must return a per-example tensor of shape [B]=({batch.batch_size},), got {shape}")
        return per_example


def _hyperparameters_from_signature(name: str, function: Callable) -> dict[str, Any]:
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"loss {name!r}: the function's first argument must be the LogProbs batch")
    hyperparameters = {}
    for parameter in parameters[1:]:
        if parameter.kind is not parameter.KEYWORD_ONLY:
            raise TypeError(f"loss {name!r}: hyper-parameter {parameter.name!r} must be keyword-only (after `*`)")
        if parameter.default is parameter.empty:
            raise TypeError(f"loss {name!r}: hyper-parameter {parameter.name!r} needs a default value")
        hyperparameters[parameter.name] = parameter.default
    return hyperparameters


def register_loss(
    name: str,
    *,
    paper: str,
    arxiv: str | None = None,
    needs_reference: bool = True,
    responses: str = "pair",
    requires: tuple[str, ...] = (),
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    trl_name: str | None = None,
    batch_coupled: bool = False,
    log_ratio_form: bool = False,
    example_weights: bool = True,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(batch, *, hyper=default, ...) -> Tensor[B]`` as loss ``name``.

    Args:
        name: lower-case snake_case; a name already registered raises.
        paper: citation (authors, year, title); arxiv: the arXiv id when there is one.
        needs_reference: the loss reads ``batch.reference`` (added to the required fields).
        responses: "pair" (K = 2), "ranked" (any K >= 2, best first) or "single" (K = 1).
        requires: other ``LogProbs`` fields that must not be None.
        choices: allowed values of string-valued hyper-parameters.
        trl_name: the TRL ``loss_type`` that computes the same value, if any.
        batch_coupled: one example's value depends on the rest of the batch (e.g. sorting across it).
        log_ratio_form: the loss reads ``policy`` and ``reference`` only through the log-ratios
            ``policy - reference`` (and ``lengths``), so f-DPO may replace each log-ratio by f'(ratio)
            (see `prefopt.losses.f_divergence`).
        example_weights: per-example weights (``LogProbs.weights``, WPO) may multiply its values; False for
            losses whose i-th value does not belong to example i (they sort across the batch).

    The function itself is returned unchanged, so it stays importable and testable on its own.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(f"loss name {name!r} must be lower-case snake_case (letters, digits, single underscores)")
    if responses not in _RESPONSES:
        raise ValueError(f"responses must be one of {list(_RESPONSES)}, got {responses!r}")
    unknown_fields = sorted(set(requires) - set(LOGPROBS_FIELDS))
    if unknown_fields:
        raise ValueError(f"requires names unknown LogProbs field(s) {unknown_fields}; fields are {list(LOGPROBS_FIELDS)}")

    def decorator(function: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"a loss named {name!r} is already registered; choose another name or unregister_loss first")
        hyperparameters = _hyperparameters_from_signature(name, function)
        for hyper, allowed in (choices or {}).items():
            if hyper not in hyperparameters:
                raise ValueError(f"loss {name!r}: choices given for {hyper!r}, which is not a hyper-parameter")
            if hyperparameters[hyper] not in allowed:
                raise ValueError(f"loss {name!r}: default {hyper}={hyperparameters[hyper]!r} is not among {allowed}")
        required = (("policy",) + (("reference",) if needs_reference else ()) + tuple(requires))
        summary = inspect.getdoc(function)
        if not summary:
            raise ValueError(f"loss {name!r}: the function needs a docstring (paper, equation, defaults)")
        _REGISTRY[name] = LossSpec(
            name=name,
            function=function,
            needs_reference=needs_reference,
            responses=responses,
            required_fields=tuple(dict.fromkeys(required)),
            hyperparameters=MappingProxyType(hyperparameters),
            choices=MappingProxyType({k: tuple(v) for k, v in (choices or {}).items()}),
            paper=paper,
            arxiv=arxiv,
            summary=summary.splitlines()[0],
            trl_name=trl_name,
            batch_coupled=batch_coupled,
            log_ratio_form=log_ratio_form,
            example_weights=example_weights,
        )
        return function

    return decorator


def unregister_loss(name: str) -> LossSpec:
    """Remove a loss (e.g. to re-run a notebook cell that registers it); returns its spec."""
    return _REGISTRY.pop(_known(name))


def _known(name: str) -> str:
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; registered losses: {', '.join(sorted(_REGISTRY))}")
    return name


def get_loss(name: str) -> LossSpec:
    """The spec of loss ``name``; call it as ``get_loss(name)(batch, **hyperparameters)`` -> Tensor[B]."""
    return _REGISTRY[_known(name)]


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_REGISTRY)
