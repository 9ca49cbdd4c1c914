"""The reference policy pi_ref: which model it is, how to run it, and its precomputed log-probs.

    reference = Reference.resolve(policy, ref_model)      # the one resolver
    with reference.active() as module:                    # no gradient, the right adapter switched on
        logps = score(module, batch)

A run's pi_ref is one of five things (`Reference.kind`):

* ``"model"``: a separate model in memory (an explicit ``ref_model``, one loaded by name as TRL loads its own,
  or `prefopt.Trainer`'s frozen copy of an in-memory policy);
* ``"ref_adapter"``: the policy with its ``ref`` adapter active (TRL gives a PEFT policy whose adapter was
  trained before a frozen copy of that adapter, named ``ref``);
* ``"base"``: the policy with its adapter disabled (a PEFT policy whose adapter starts at zero, so the base
  *is* the initial policy);
* ``"initial"``: the policy itself, before its first step: full fine-tuning with ``precompute_ref_log_probs``
  and no reference in memory (TRL's behaviour; valid only while precomputing);
* ``"none"``: no reference at all (a reference-free loss on a plain policy).

The trainer, the round loop, the sampling callbacks, TR-DPO's refresh and CDR's density-ratio reward all ask
`Reference` (never ``ref_model is None`` / ``disable_adapter()`` of their own), so they agree on pi_ref.

`ReferenceCache` stores precomputed reference log-probs on disk (`prefopt.training.reference_cache`), keyed by
a fingerprint of the reference weights actually used (`Reference.weights_digest`), the token ids and the
settings that change log-probs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Callable, Iterator

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from torch.utils.data import DataLoader

from prefopt._quiet import activation_checkpointing_disabled
from prefopt.logprobs import as_matrix
from prefopt.training import reference_cache

logger = logging.getLogger(__name__)

KINDS = ("model", "ref_adapter", "base", "initial", "none")
# Columns holding precomputed reference log-probs (`precompute_ref_log_probs=True`, or TRL's own columns).
REFERENCE_COLUMNS = {"pair": ("ref_chosen_logps", "ref_rejected_logps"), "kwise": "ref_logps"}
REF_ADAPTER = "ref"  # the adapter name TRL gives the frozen copy of a pretrained adapter


class Reference:
    """pi_ref of a run (module docstring). ``policy`` is the trained model (its adapters give the adapter kinds);
    ``model`` the separate reference model of kind ``"model"``."""

    def __init__(self, kind: str, *, policy=None, model=None, checkpointing_kwargs: dict | None = None):
        if kind not in KINDS:
            raise ValueError(f"reference kind must be one of {list(KINDS)}, got {kind!r}")
        if kind == "model" and model is None:
            raise ValueError("a reference of kind 'model' needs the model")
        if kind in ("ref_adapter", "base") and not is_peft_model(_unwrapped(policy)):
            raise ValueError(f"a reference of kind {kind!r} is the policy with an adapter switched; the policy is not a PEFT model")
        self.kind, self.policy, self.model = kind, policy, model
        self.checkpointing_kwargs = checkpointing_kwargs

    # ------------------------------------------------------------------------------------- resolving

    @classmethod
    def separate(cls, model) -> Reference:
        """A separate reference model (kind ``"model"``)."""
        return cls("model", model=model)

    @classmethod
    def base_of(cls, policy) -> Reference:
        """The adapter-disabled base of a PEFT policy (kind ``"base"``)."""
        return cls("base", policy=policy)

    @classmethod
    def resolve(cls, policy, model=None, *, needs_reference: bool = True) -> Reference:
        """The one resolver: ``model`` when given; for a PEFT policy its ``ref`` adapter when it has one, else its
        base; for a plain policy the policy itself before training (``"initial"``), or ``"none"`` when no loss
        needs a reference."""
        if model is not None:
            return cls.separate(model)
        unwrapped = _unwrapped(policy)
        if is_peft_model(unwrapped):
            return cls("ref_adapter" if REF_ADAPTER in unwrapped.peft_config else "base", policy=policy)
        return cls("initial" if needs_reference else "none", policy=policy)

    def __repr__(self) -> str:
        return f"Reference({self.kind})"

    def describe(self) -> str:
        return {
            "model": "a separate reference model",
            "ref_adapter": "the policy with its frozen 'ref' adapter (a copy of the adapter it started from)",
            "base": "the policy with its adapter disabled",
            "initial": "the policy before training (precomputed log-probs)",
            "none": "no reference",
        }[self.kind]

    # ---------------------------------------------------------------------------------------- running

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        """The module whose forward is pi_ref, under no gradient (for the adapter kinds, with the adapter switched
        and activation checkpointing off for the block)."""
        if self.kind == "none":
            raise ValueError("this run has no reference model (the loss needs none); pass ref_model=... to give one")
        with torch.no_grad():
            if self.kind == "model":
                yield self.model
            elif self.kind == "initial":
                yield self.policy
            else:
                from trl.trainer.utils import use_adapter  # deferred: importing TRL takes seconds (start-up time)

                unwrapped = _unwrapped(self.policy)
                adapter = REF_ADAPTER if self.kind == "ref_adapter" else None
                with activation_checkpointing_disabled(unwrapped, self.checkpointing_kwargs), use_adapter(unwrapped, adapter_name=adapter):
                    yield self.policy

    def frozen_copy(self) -> Reference:
        """A separate, frozen copy of what this reference runs now (e.g. of the initial policy, for a callback that
        must compare against the policy as it starts)."""
        if self.kind == "none" or self.kind == "initial":
            return Reference.separate(copy.deepcopy(_unwrapped(self.policy)).eval().requires_grad_(False))
        return self

    # ------------------------------------------------------------------------------------ fingerprint

    def weights_digest(self) -> str:
        """SHA-256 of the reference weights actually used: the separate model's, or the policy's without the
        adapters the reference switches off (a freshly initialised adapter does not change the key)."""
        module = _unwrapped(self.model if self.kind == "model" else self.policy)
        skip: set[str] = set()
        if self.kind in ("base", "ref_adapter"):
            skip = set(module.peft_config) - ({REF_ADAPTER} if self.kind == "ref_adapter" else set())
        return reference_cache.module_digest(module, skip)


def _unwrapped(model):
    return extract_model_from_parallel(model) if model is not None else None


# ------------------------------------------------------------------------ a reference that moves (TR-DPO)


def is_zero3(accelerator) -> bool:
    """Whether ``accelerator`` shards parameters with DeepSpeed ZeRO-3."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", None) == 3


@contextlib.contextmanager
def full_parameters(modules, accelerator, *, modifier_rank: int | None = None) -> Iterator[None]:
    """The full (gathered) parameters of ``modules`` inside the block under DeepSpeed ZeRO-3, where each process
    holds only a shard; with ``modifier_rank`` the changes that process makes are kept and sent to the others.
    Elsewhere (one process, DDP: every process holds every parameter) it does nothing."""
    if not is_zero3(accelerator):
        yield
        return
    import deepspeed  # only under ZeRO-3, where it is installed

    parameters = [parameter for module in modules for parameter in module.parameters()]
    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=modifier_rank):
        yield


@torch.no_grad()
def mix_into(reference_model, policy, alpha: float, accelerator) -> None:
    """reference <- alpha * policy + (1 - alpha) * reference, parameter by parameter. Under ZeRO-3 both models'
    parameters are gathered first and process 0 mixes them (as TRL's ``SyncRefModelCallback.sync_target_model``),
    so shards are never mixed with the wrong shards."""
    with full_parameters((policy, reference_model), accelerator, modifier_rank=0):
        if is_zero3(accelerator) and accelerator.process_index != 0:
            return
        for reference_parameter, policy_parameter in zip(reference_model.parameters(), policy.parameters(), strict=True):
            reference_parameter.mul_(1.0 - alpha).add_(policy_parameter, alpha=alpha)


# ------------------------------------------------------------------------------ the trainer's reference


def model_for_trl(model, ref_model, args, peft_config, quantization_config) -> tuple[Any, bool]:
    """``(ref_model to give TRL, whether it is a copy prefopt made)``, before TRL builds the trainer.

    A `Reference` passes its model (None for the adapter kinds); a name is loaded as TRL loads its own reference;
    with an in-memory policy, no PEFT and no precomputation the reference is a frozen copy of the initial model
    (TRL would reload it from ``model.config._name_or_path``, which an in-memory model does not have); a policy
    given by name is left to TRL."""
    if isinstance(ref_model, Reference):
        return ref_model.model, False
    if isinstance(ref_model, str):
        return _load(ref_model, model, args, quantization_config), False
    if ref_model is None and not isinstance(model, str):
        if peft_config is None and not is_peft_model(model) and not args.precompute_ref_log_probs:
            return copy.deepcopy(model), True
    return ref_model, False


def _load(name_or_path: str, model, args, quantization_config):
    """The reference named ``name_or_path``, loaded with `model_init_kwargs` like TRL's implicit reference."""
    from trl.trainer.utils import create_model_from_path  # deferred: importing TRL takes seconds (start-up time)

    init_kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
    init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    if not isinstance(model, str):  # a policy given as an object was not loaded from model_init_kwargs
        init_kwargs.setdefault("dtype", model.dtype)
    return create_model_from_path(name_or_path, **init_kwargs)


def settle(policy, trl_ref_model, *, requested, copied: bool, needs_reference: bool, had_ref_adapter: bool,
           checkpointing_kwargs: dict | None = None) -> Reference:
    """The trainer's `Reference` once TRL has built the trainer (``trl_ref_model`` is TRL's ``ref_model``).

    A requested `Reference` of kind ``"base"`` (the round loop: pi_ref is the base, whatever adapter the policy
    holds now) removes the ``ref`` adapter TRL adds to a PEFT policy given without ``peft_config``; a copy prefopt
    made is dropped when no loss needs a reference."""
    if isinstance(requested, Reference) and requested.kind == "base":
        unwrapped = _unwrapped(policy)
        if REF_ADAPTER in unwrapped.peft_config and not had_ref_adapter:
            unwrapped.delete_adapter(REF_ADAPTER)
        return Reference("base", policy=policy, checkpointing_kwargs=checkpointing_kwargs)
    if trl_ref_model is not None and not (copied and not needs_reference):
        return Reference.separate(trl_ref_model)
    resolved = Reference.resolve(policy, needs_reference=needs_reference)
    resolved.checkpointing_kwargs = checkpointing_kwargs
    return resolved


# ----------------------------------------------------------------------------- precomputed log-probs


class ReferenceCache:
    """Reference log-probs precomputed once per dataset (``precompute_ref_log_probs=True``) and stored under
    ``cache_dir``; ``hits`` / ``misses`` count the datasets found in the store or computed."""

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.hits = self.misses = 0

    def add_columns(self, dataset, name: str, *, key: str, compute: Callable[[], torch.Tensor], is_main_process: bool,
                    wait_for_everyone: Callable[[], None]):
        """``dataset`` with its reference columns (pairs: ``ref_chosen_logps`` / ``ref_rejected_logps``; K-wise:
        ``ref_logps``), read from the store under ``key`` or computed by ``compute()`` and stored."""
        kwise = "completions_ids" in dataset.column_names
        width = max((len(ids) for ids in dataset["completions_ids"]), default=0) if kwise else 2
        values = reference_cache.load(self.cache_dir, key, num_rows=len(dataset), width=width)
        if values is None:
            self.misses += 1
            values = compute()
            if is_main_process:
                reference_cache.save(self.cache_dir, key, values)
            wait_for_everyone()
        else:
            self.hits += 1
        columns = [REFERENCE_COLUMNS["kwise"]] if kwise else list(REFERENCE_COLUMNS["pair"])
        dataset = dataset.remove_columns([c for c in columns if c in dataset.column_names])
        if kwise:
            counts = [len(ids) for ids in dataset["completions_ids"]]
            return dataset.add_column(columns[0], [values[i, :k].tolist() for i, k in enumerate(counts)])
        dataset = dataset.add_column(columns[0], values[:, 0].tolist())
        return dataset.add_column(columns[1], values[:, 1].tolist())


def fingerprint(reference: Reference, dataset, settings: dict) -> str:
    """Key of the stored reference log-probs: reference weights + token ids + the settings that change log-probs."""
    return reference_cache.fingerprint(
        reference.weights_digest(),
        reference_cache.rows_digest(dataset, ("prompt_ids", "chosen_ids", "rejected_ids", "completions_ids")),
        settings,
    )


def reference_table(dataset, batch_size: int, collator, accelerator, reference_logps: Callable[[dict], torch.Tensor]) -> torch.Tensor:
    """Reference log-probs [rows, K] of every row of ``dataset`` (K-wise padding 0), gathered over processes."""
    dataloader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False)
    rows = []
    for batch in accelerator.prepare(dataloader):
        matrix = as_matrix(reference_logps(batch), batch["response_index"])
        rows.append(accelerator.gather_for_metrics(matrix).float().cpu())
    width = max(row.size(1) for row in rows)
    return torch.cat([torch.nn.functional.pad(row, (0, width - row.size(1))) for row in rows])
