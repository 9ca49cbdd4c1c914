"""The loss registry: the single source of loss names, capabilities and hyper-parameter defaults.

A loss is a pure function ``fn(batch: LogProbs, *, hp1=default1, ...) -> Tensor[B]``. Its
hyper-parameters and their defaults are read from the keyword-only arguments of its signature, so
the function is the one place where a default is written. ``register_loss`` stores a frozen
`LossSpec`; the trainer, the CLI help, the README table and the tests all read the specs.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from ._batch import LOGPROBS_FIELDS, LogProbs, invalid_values

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_RESPONSES = {
    "pair": "exactly 2 responses per example (chosen, rejected)",
    "ranked": "2 or more responses per example, ranked best first",
    "single": "1 sampled response per example",
}
_REGISTRY: dict[str, "LossSpec"] = {}
_BOUNDS = ("[]", "[)", "(]", "()")
# Every beta is an inverse temperature: a loss that declares no range for it gets this one.
_BETA_RANGE = (0, None, "()")


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric hyper-parameter: ``low``/``high`` (None = unbounded) and which ends are closed.

    ``Range(0, 0.5, "[)")`` is 0 <= x < 0.5. Every value must also be a finite real number.
    """

    low: float | None
    high: float | None
    bounds: str = "[]"

    def __post_init__(self):
        if self.bounds not in _BOUNDS:
            raise ValueError(f"range bounds must be one of {list(_BOUNDS)}, got {self.bounds!r}")
        for end in (self.low, self.high):
            if end is not None and (not _is_real(end) or not math.isfinite(end)):
                raise ValueError(f"range ends must be finite numbers or None, got {end!r}")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"range low {self.low!r} must be below high {self.high!r}")

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            # a per-example value (e.g. f-DPG's log Z, one estimate per prompt): every element must be in range
            value = value.detach()
            low_ok = self.low is None or bool((value >= self.low if self.bounds[0] == "[" else value > self.low).all())
            high_ok = self.high is None or bool((value <= self.high if self.bounds[1] == "]" else value < self.high).all())
            return bool(torch.isfinite(value).all()) and low_ok and high_ok
        if not _is_real(value) or not math.isfinite(value):
            return False
        low_ok = self.low is None or (value >= self.low if self.bounds[0] == "[" else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.bounds[1] == "]" else value < self.high)
        return low_ok and high_ok

    def __str__(self) -> str:
        """``in [0, 0.5)``, ``> 0``, ``<= 1``, or '' when unbounded."""
        if self.low is not None and self.high is not None:
            return f"in {self.bounds[0]}{self.low:g}, {self.high:g}{self.bounds[1]}"
        if self.low is not None:
            return f"{'>=' if self.bounds[0] == '[' else '>'} {self.low:g}"
        if self.high is not None:
            return f"{'<=' if self.bounds[1] == ']' else '<'} {self.high:g}"
        return ""


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
    ranges: Mapping[str, Range]  # every numeric hyper-parameter has one (unbounded: finite numbers only)
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
        for name, allowed_range in self.ranges.items():
            if name in self.choices and _is_named_value(resolved[name], self.choices[name]):
                continue  # a named value (e.g. bvpo's alpha="auto") instead of a number
            if resolved[name] not in allowed_range:
                condition = f" {allowed_range}" if str(allowed_range) else ""
                named = f" or one of {list(self.choices[name])}" if name in self.choices else ""
                raise ValueError(
                    f"loss {self.name!r}: {name} must be a finite number{condition}{named}, got {resolved[name]!r}"
                )
        for name, allowed in self.choices.items():
            if name in self.ranges and not isinstance(resolved[name], str):
                continue  # a number, checked against the range above
            if not _is_named_value(resolved[name], allowed):
                raise ValueError(f"loss {self.name!r}: {name} must be one of {list(allowed)}, got {resolved[name]!r}")
        return resolved

    def check_batch(self, batch: LogProbs) -> None:
        """Raise a ValueError naming the problem when ``batch`` cannot feed this loss."""
        if not isinstance(batch, LogProbs):
            raise TypeError(f"loss {self.name!r} takes a prefopt.losses.LogProbs batch, got {type(batch).__name__}")
        for name in self.required_fields:
            if getattr(batch, name) is None:
                raise ValueError(f"loss {self.name!r} needs LogProbs.{name}, which is None")
        self._check_finite(batch)
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

    def _check_finite(self, batch: LogProbs) -> None:
        """Refuse a NaN or inf in any floating field (padding columns, where ``batch.mask`` is False, excepted)."""
        for name in LOGPROBS_FIELDS:
            values = getattr(batch, name)
            if values is None or not values.is_floating_point():
                continue
            bad = invalid_values(name, values)
            if batch.mask is not None and bad.shape == batch.mask.shape:
                bad = bad & batch.mask
            if bad.any():
                rows = (bad.flatten(1).any(dim=1) if bad.dim() > 1 else bad).nonzero().flatten().tolist()
                raise ValueError(
                    f"loss {self.name!r}: LogProbs.{name} holds a NaN or inf in batch rows {rows}; log-probs, "
                    "scores and weights must be finite (padding columns excluded by `mask` may hold anything)"
                )

    def __call__(self, batch: LogProbs, **hyperparameters: Any) -> torch.Tensor:
        resolved = self.resolve_hyperparameters(**hyperparameters)
        self.check_batch(batch)
        per_example = self.function(batch, **resolved)
        if not isinstance(per_example, torch.Tensor) or tuple(per_example.shape) != (batch.batch_size,):
            shape = tuple(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example).__name__
            raise ValueError(f"loss {self.name!r} must return a per-example tensor of shape [B]=({batch.batch_size},), got {shape}")
        return per_example


def _is_named_value(value: Any, allowed: tuple) -> bool:
    return isinstance(value, str) and value in allowed if any(isinstance(a, str) for a in allowed) else value in allowed


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
    ranges: Mapping[str, tuple[float | None, float | None, str] | Range] | None = None,
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
        ranges: allowed intervals of numeric hyper-parameters, ``{"epsilon": (0, 0.5, "[)")}`` = 0 <= epsilon
            < 0.5 (None for an open end). ``beta`` defaults to (0, None, "()"); any other numeric
            hyper-parameter without a range must still be a finite number.
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
            # a hyper-parameter with a range as well takes a number in it or one of these named values
            if hyperparameters[hyper] not in allowed and hyper not in (ranges or {}):
                raise ValueError(f"loss {name!r}: default {hyper}={hyperparameters[hyper]!r} is not among {allowed}")
        resolved_ranges = _ranges(name, hyperparameters, ranges or {})
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
            ranges=MappingProxyType(resolved_ranges),
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


def _ranges(name: str, hyperparameters: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Range]:
    """The declared ranges, checked against the signature, plus the implicit ones (beta > 0, finite numbers)."""
    ranges = {}
    for hyper, declared_range in declared.items():
        if hyper not in hyperparameters:
            raise ValueError(f"loss {name!r}: a range is given for {hyper!r}, which is not a hyper-parameter")
        if not isinstance(declared_range, Range):
            if not isinstance(declared_range, tuple) or len(declared_range) != 3:
                raise ValueError(f"loss {name!r}: the range of {hyper!r} must be (low, high, bounds), got {declared_range!r}")
            declared_range = Range(*declared_range)
        ranges[hyper] = declared_range
    for hyper, default in hyperparameters.items():
        if hyper not in ranges and _is_real(default):
            ranges[hyper] = Range(*_BETA_RANGE) if hyper == "beta" else Range(None, None, "()")
    for hyper, allowed_range in ranges.items():
        if hyperparameters[hyper] not in allowed_range:
            raise ValueError(f"loss {name!r}: default {hyper}={hyperparameters[hyper]!r} is outside its range {allowed_range}")
    return {hyper: ranges[hyper] for hyper in hyperparameters if hyper in ranges}


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
