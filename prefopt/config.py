"""`PrefOptConfig`: `trl.DPOConfig` plus the choice of a registered loss (or a weighted combination).

    from prefopt import PrefOptConfig
    args = PrefOptConfig("out", loss="rdpo", loss_kwargs={"epsilon": 0.2}, beta=0.1)
    args = PrefOptConfig("out", loss=[("dpo", 1.0), ("sft", 0.5)])       # weighted combination
    args = PrefOptConfig("out", loss="dpo:1.0,sft:0.5")                   # the same, command-line form

The allowed names and the help text are read from the loss registry when this module is imported, so
they never go stale; validation in ``__post_init__`` reads the registry again (losses registered later
in a notebook are accepted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig

from prefopt._cache import cache_root
from prefopt.losses import combine_losses, get_loss, list_losses

# DPOConfig fields that TRL passes to its losses, and the registry hyper-parameter names they fill
# when the loss is chosen through TRL's `loss_type` (i.e. `loss` is left unset).
_TRL_FIELD_TO_HYPERPARAMETERS = {
    "label_smoothing": ("epsilon", "label_smoothing"),
    "discopop_tau": ("tau", "discopop_tau"),
}


# What a NaN or inf in a training step does (PrefOptConfig.on_nonfinite; prefopt.training.nonfinite acts on it).
ON_NONFINITE = ("error", "stop", "skip")

_TRL_DEFAULT_BETA = 0.1  # trl.DPOConfig's default beta, kept for configs that choose the loss TRL's way


def _loss_help() -> str:
    entries = []
    for name in list_losses():
        spec = get_loss(name)
        trl = f", TRL loss_type {spec.trl_name!r}" if spec.trl_name else ""
        entries.append(f"`{name}` ({spec.summary}{trl})")
    return (
        "Registered prefopt loss to train with, or a weighted combination: in Python a list of (name, weight) "
        "pairs, on the command line 'name:weight,name:weight' (e.g. 'dpo:1.0,sft:0.5'; a missing weight is 1.0). "
        "When unset, TRL's `loss_type`/`loss_weights` are mapped to the registered losses with the same TRL name "
        "(and `label_smoothing` fills `epsilon`). Registered losses: " + "; ".join(entries) + "."
    )


def parse_loss(loss: Any) -> tuple[tuple[str, float], ...]:
    """Normalise ``loss`` ("dpo", "dpo:1,sft:0.5", ["dpo", ("sft", 0.5)]) to ((name, weight), ...), validated
    by `prefopt.losses.combine_losses` (unknown or repeated names, non-finite weights)."""
    if isinstance(loss, str):  # the command-line form
        items = []
        for item in (part.strip() for part in loss.split(",")):
            if not item:
                continue
            name, _, weight = item.partition(":")
            try:
                items.append((name.strip(), float(weight) if weight.strip() else 1.0))
            except ValueError:
                raise ValueError(f"loss {loss!r}: weight {weight!r} of {name!r} is not a number") from None
    elif isinstance(loss, (list, tuple)):
        items = list(loss)
    else:
        raise TypeError(f"loss must be a name, 'name:weight,...' or a list of (name, weight), got {type(loss).__name__}")
    if not items:
        raise ValueError(f"loss {loss!r} names no loss")
    return tuple((spec.name, weight) for spec, weight in combine_losses(items).components)


def _convert_value(value: Any, default: Any, where: str) -> Any:
    """A loss_kwargs value typed like the hyper-parameter's default: "0.2" -> 0.2 for a float, refused otherwise."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{where} must be true or false, got the string {value!r}")
    if isinstance(default, (int, float)):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number, got the string {value!r}") from None
        if isinstance(default, int) and number.is_integer():
            return int(number)
        return number
    return value


def _converted_loss_kwargs(loss_kwargs: dict, components: tuple[tuple[str, float], ...]) -> dict:
    """`loss_kwargs` with strings (from YAML or a shell) converted to the type of each hyper-parameter's default,
    naming the key (``loss_kwargs.epsilon``, ``loss_kwargs.sft.alpha``) when a string cannot be converted."""
    specs = [get_loss(name) for name, _ in components]
    names = {spec.name for spec in specs}
    converted = {}
    for key, value in loss_kwargs.items():
        if key in names and isinstance(value, dict):
            defaults = get_loss(key).hyperparameters
            choices = get_loss(key).choices
            converted[key] = {
                k: v if v in choices.get(k, ()) else _convert_value(v, defaults.get(k), f"loss_kwargs.{key}.{k}")
                for k, v in value.items()
            }
            continue
        default = next((spec.hyperparameters[key] for spec in specs if key in spec.hyperparameters), None)
        named = any(isinstance(value, str) and value in spec.choices.get(key, ()) for spec in specs)
        converted[key] = value if named else _convert_value(value, default, f"loss_kwargs.{key}")
    return converted


@dataclass
class PrefOptConfig(DPOConfig):
    """`trl.DPOConfig` with a loss chosen from the prefopt registry.

    Added fields:
        loss: registered loss name, a list of (name, weight), or 'name:weight,...'. Unset: mapped from TRL's
            `loss_type` / `loss_weights` through each spec's `trl_name` (so a TRL config works unchanged).
        loss_kwargs: hyper-parameters of the loss. Flat keys are shared by every component of a combination that
            accepts them; a key equal to a component's name holds that component's own dict.
        beta: changed default. Unset (None), every loss trains with its own registry default (simpo 2.0, dpo 0.1,
            ...); set (here, on the command line or in YAML), it goes to every loss that has a `beta`. A TRL-style
            config (`loss` unset, `loss_type` chosen) keeps TRL's default 0.1.
        ref_logps_cache_dir: where `precompute_ref_log_probs=True` stores reference log-probs, keyed by a fingerprint
            of the reference weights, the tokenised data and the truncation settings.
        prefix_sharing: encode each prompt once for all its responses (packed row, block mask); default on.
        padding_free: pack the whole batch into one row without padding; default off (see the README's
            performance section for the measurements behind both defaults).
    """

    loss: str | None = field(default=None, metadata={"help": _loss_help()})
    beta: float | None = field(
        default=None,
        metadata={
            "help": "KL strength given to every loss that has a `beta` hyper-parameter. Unset: each loss uses its own "
            "default (e.g. simpo 2.0, dpo 0.1; TRL's 0.1 when the loss is chosen by `loss_type`). A `beta` in "
            "`loss_kwargs` wins over this one."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Hyper-parameters of the loss as a dict (JSON on the command line), e.g. '{\"epsilon\": 0.2}'. "
            "For a combination, a key naming a component holds that component's dict, e.g. "
            "'{\"sft\": {...}}'; other keys go to every component accepting them."
        },
    )
    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory for reference log-probs precomputed with `precompute_ref_log_probs=True`, reused by "
            "any later run (any loss) on the same reference weights, tokenised data and truncation settings. "
            "Default: $PREFOPT_CACHE/ref_logps or ~/.cache/prefopt/ref_logps."
        },
    )

    prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Encode each prompt once for all its responses (one packed row, each response seeing its "
            "prompt, not its siblings) where a cost model of the attention says it pays, else one row per response "
            "(TRL's rows). Same log-probs up to rounding. Needs eager or sdpa attention. False: always TRL's layout."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack all examples of a batch into one row without padding (position ids restarting, a block "
            "mask keeping examples apart), with or without `prefix_sharing`. TRL 1.16 disables its own; prefopt "
            "implements it."
        },
    )

    on_nonfinite: str | None = field(
        default=None,
        metadata={
            "help": "NaN/inf in a step: error (raise), stop (end at the last finite weights) or skip (counted). "
            "Default: stop for a TRL-style config, else error.",
            "choices": list(ON_NONFINITE),
        },
    )

    def __post_init__(self):
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs) if self.loss_kwargs.strip() else None
            except json.JSONDecodeError as error:
                raise ValueError(f"loss_kwargs {self.loss_kwargs!r} is not JSON: {error}") from None
        if self.loss_kwargs is not None and not isinstance(self.loss_kwargs, dict):
            raise ValueError(f"loss_kwargs must be a dict (JSON object), got {self.loss_kwargs!r}")
        if self.on_nonfinite is not None and self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {list(ON_NONFINITE)}, got {self.on_nonfinite!r}")
        # TRL's gradient_checkpointing (default True) is transformers' deprecated alias of activation_checkpointing;
        # passing it on under the new name keeps its meaning without a FutureWarning on every config.
        if getattr(self, "activation_checkpointing", False) is None and self.gradient_checkpointing is not None:
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()
        if self.ref_logps_cache_dir is None:
            self.ref_logps_cache_dir = str(cache_root() / "ref_logps")
        if self.loss_kwargs is not None:
            self.loss_kwargs = _converted_loss_kwargs(self.loss_kwargs, self.loss_components())
        self.loss_hyperparameters()  # validates names, weights and hyper-parameters now, not at the first step

    def nonfinite_policy(self) -> str:
        """`on_nonfinite` as set, else its default: 'stop' for a TRL-style config (``loss`` unset: TRL's
        `DPOTrainer` keeps stepping through NaN, so a drop-in must return from `train()` too, but never with NaN
        weights), 'error' otherwise. Read when training, so a ``loss`` set after construction counts."""
        if self.on_nonfinite is not None:
            return self.on_nonfinite
        return "stop" if self.loss is None else "error"

    def loss_components(self) -> tuple[tuple[str, float], ...]:
        """The (name, weight) pairs to train with, from `loss` or else from TRL's `loss_type`/`loss_weights`."""
        if self.loss is not None:
            return parse_loss(self.loss)
        by_trl_name = {get_loss(name).trl_name: name for name in list_losses() if get_loss(name).trl_name}
        weights = self.loss_weights or [1.0] * len(self.loss_type)
        components = []
        for loss_type, weight in zip(self.loss_type, weights, strict=True):
            if loss_type not in by_trl_name:
                raise ValueError(
                    f"TRL loss_type {loss_type!r} has no registered prefopt equivalent (registered TRL names: "
                    f"{sorted(by_trl_name)}); set `loss` to one of: {', '.join(list_losses())}"
                )
            components.append((by_trl_name[loss_type], float(weight)))
        return parse_loss(components)

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """Resolved hyper-parameters of every component, by loss name (validated by each spec).

        Flat `loss_kwargs` keys go to every component accepting them, a component's own dict wins, then
        an explicitly set `beta` (and, for a TRL-style config, `beta` with TRL's default 0.1 and
        `label_smoothing` / `discopop_tau`) fill what is not given; the rest are each loss's own defaults."""
        loss = combine_losses(self.loss_components())
        shared = dict(self.loss_kwargs or {})
        own = {name: shared.pop(name) for name in loss.names if isinstance(shared.get(name), dict)}
        defaults = {} if self.beta is None else {"beta": self.beta}
        if self.loss is None:  # TRL-style config: TRL's own fields feed the matching hyper-parameters
            defaults["beta"] = _TRL_DEFAULT_BETA if self.beta is None else self.beta
            for trl_field, candidates in _TRL_FIELD_TO_HYPERPARAMETERS.items():
                defaults.update((candidate, getattr(self, trl_field)) for candidate in candidates)
        accepted = {name for spec, _ in loss.components for name in spec.hyperparameters}
        shared = {**{k: v for k, v in defaults.items() if k in accepted}, **shared}
        return loss.component_hyperparameters(own, **shared)
