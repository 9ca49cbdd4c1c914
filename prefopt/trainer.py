"""`prefopt.Trainer`: `trl.DPOTrainer` with the loss taken from the prefopt registry.

    from prefopt import Trainer, PrefOptConfig
    trainer = Trainer(model, args=PrefOptConfig("out", loss="rdpo", loss_kwargs={"epsilon": 0.2}),
                      train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

Everything TRL does before the loss (model loading, PEFT wrapping, tokenisation, collation, logging,
saving) is TRL's. This class replaces only the loss step: it computes the sequence log-probs of every
response under the policy (and the reference when a loss needs one), fills a `LogProbs` batch from
the table below, and calls the registered loss. It never looks at a loss's name; it reads the spec.

    LogProbs field   provided by
    policy           the policy forward (sum of response-token log-probs)
    reference        the reference forward: `ref_model`, the adapter-disabled base (PEFT), a copy of the
                     initial model, or precomputed (`precompute_ref_log_probs`, cached on disk)
    lengths          response token counts
    mask             K-wise rows with fewer responses than the batch's K
    scores           columns `score_chosen`/`score_rejected` (pairs) or `scores` (K-wise)
    previous         columns `previous_chosen_logps`/`previous_rejected_logps` (pairs) or `previous_logps`
    others           not available offline (VPO calibration samples, BVPO empty-trace view, f-DPG samples):
                     the constructor raises naming the field
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import AutoProcessor, ProcessorMixin
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, use_adapter

from prefopt import packing, reference_cache
from prefopt._trainer_data import (
    FIELD_COLUMNS,
    OFFLINE_UNAVAILABLE,
    REFERENCE_COLUMNS,
    PreferenceCollator,
    is_kwise_example,
    tokenize_kwise,
)
from prefopt.config import PrefOptConfig
from prefopt.losses import LogProbs, combine_losses

logger = logging.getLogger(__name__)

# Batch keys that are not model inputs.
_NON_MODEL_KEYS = ("completion_mask", "response_index", "ref_chosen_logps", "ref_rejected_logps")
# Fields every batch carries whatever the loss (cheap to provide).
_ALWAYS_PROVIDED = ("policy", "reference", "lengths", "mask")


def _drop_trl_padding_free_warning(record: logging.LogRecord) -> bool:
    return "padding_free=True` is temporarily unavailable" not in record.getMessage()


def _as_prefopt_config(args: DPOConfig) -> PrefOptConfig:
    """A PrefOptConfig with the same values as a plain `trl.DPOConfig` (its `loss_type` then picks the loss)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    return PrefOptConfig(**values)


class Trainer(DPOTrainer):
    """Drop-in for `trl.DPOTrainer` training any registered loss; same constructor arguments.

    Args are TRL's (`model` name or object, `ref_model`, `args`, `data_collator`, `train_dataset`,
    `eval_dataset`, `processing_class`, `compute_metrics`, `callbacks`, `optimizers`,
    `quantization_config`, `peft_config`). `args` may be a `PrefOptConfig` or a plain `trl.DPOConfig`
    (then `loss_type`/`loss_weights` choose the loss). Datasets are TRL's preference formats (standard
    or conversational, explicit or implicit prompt) or K-wise rows `prompt` + `completions` (best
    first) with an optional `ranking` (completion indices, best first).

    Differences from TRL: with a model object, no `ref_model`, no PEFT and no precomputation, the
    reference is a copy of the initial model (TRL reloads it from `model.config._name_or_path`);
    losses that need no reference never run one (the copy is dropped). `ld_alpha`,
    `use_weighting` and `f_divergence_type != "reverse_kl"` are not supported (they raise).
    Callbacks that define `bind_trainer(trainer)` are given the trainer after construction.
    """

    _tag_names = ["trl", "dpo", "prefopt"]
    _name = "PrefOpt"

    def __init__(
        self,
        model,
        ref_model=None,
        args: DPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PrefOptConfig(f"{model_name.split('/')[-1] or 'model'}-PrefOpt")
        elif not isinstance(args, PrefOptConfig):
            args = _as_prefopt_config(args)
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        for unsupported, active in (
            ("ld_alpha", args.ld_alpha is not None),
            ("use_weighting", args.use_weighting),
            ("f_divergence_type", args.f_divergence_type != "reverse_kl"),
        ):
            if active:
                raise NotImplementedError(f"prefopt.Trainer does not support `{unsupported}`; use trl.DPOTrainer for it")

        self.preference_loss = combine_losses(args.loss_components())
        self.loss_hyperparameters = args.loss_hyperparameters()
        first_example = next(iter(train_dataset))
        if "image" in first_example or "images" in first_example:
            raise NotImplementedError("prefopt.Trainer handles text datasets only; use trl.DPOTrainer for vision data")
        self.kwise_data = is_kwise_example(first_example)
        self._check_loss_can_be_served(first_example)
        needs_reference = self.preference_loss.needs_reference
        self._reference_hits = self._reference_misses = 0
        self.dropped_rows: dict[str, int] = {}  # dataset name -> rows filtered out during preparation
        self.latest_log_ratios: torch.Tensor | None = None  # policy - reference of the last training batch's responses

        # TRL would reload the reference from `model.config._name_or_path`, which an in-memory model does not have.
        uses_peft = peft_config is not None or is_peft_model(model)
        reference_copied = False
        if ref_model is None and not uses_peft and not args.precompute_ref_log_probs and not isinstance(model, str):
            ref_model, reference_copied = copy.deepcopy(model), True

        if data_collator is None:
            if processing_class is None:
                model_id = model if isinstance(model, str) else get_config_model_id(model.config)
                processing_class = AutoProcessor.from_pretrained(model_id, trust_remote_code=args.trust_remote_code)
            tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
            tokenizer.pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
            data_collator = PreferenceCollator(
                pad_token_id=tokenizer.pad_token_id,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )

        self.packing_fallback_reason: str | None = None  # why the last forward used the plain layout, if it did
        self._packing_checked: dict[int, str | None] = {}  # id(model) -> None (packing verified) or the reason not
        self._packing_logged: set[tuple[int, str]] = set()  # fallbacks already logged
        self._packed_layout_cache: tuple | None = None  # (input_ids, switches, layout) of the last batch
        # TRL 1.16 logs that its own `padding_free` is disabled; prefopt.packing implements it, so drop that message
        trl_logger = logging.getLogger("trl.trainer.dpo_trainer")
        trl_logger.addFilter(_drop_trl_padding_free_warning)
        try:
            super().__init__(
                model=model,
                ref_model=ref_model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            trl_logger.removeFilter(_drop_trl_padding_free_warning)
        if not needs_reference and (reference_copied or ref_model is None):
            self.ref_model = None  # reference-free loss: free the copy TRL prepared
        self._eval_prefix = "eval"
        first_hyperparameters = self.loss_hyperparameters[self.preference_loss.names[0]]
        self.metric_beta = first_hyperparameters.get("beta", args.beta)
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "bind_trainer"):
                callback.bind_trainer(self)

    # ----------------------------------------------------------------------------------------- checks

    def _check_loss_can_be_served(self, example: dict[str, Any]) -> None:
        loss, names = self.preference_loss, list(self.preference_loss.names)
        if loss.responses == "single":
            raise ValueError(
                f"loss {names} trains on one on-policy sample per prompt with proposal/target log-probs; the offline "
                "Trainer serves preference datasets (pairs or rankings). Use it in an online loop instead."
            )
        if self.kwise_data and not loss.kwise:
            raise ValueError(
                f"the dataset is K-wise (`completions` column) but loss {names} is pairwise; use a ranked loss "
                "(a registry spec with responses='ranked', e.g. 'plackett_luce') or split the rankings into pairs "
                "with a prefopt.data adapter"
            )
        layout = "kwise" if self.kwise_data else "pair"
        for field in loss.required_fields:
            if field in _ALWAYS_PROVIDED:
                continue
            if field in FIELD_COLUMNS:
                columns = FIELD_COLUMNS[field][layout]
                columns = (columns,) if isinstance(columns, str) else columns
                missing = [column for column in columns if column not in example]
                if missing:
                    raise ValueError(
                        f"loss {names} needs LogProbs.{field}, read from dataset column(s) {list(columns)}; "
                        f"the dataset lacks {missing}"
                    )
            else:
                reason = OFFLINE_UNAVAILABLE.get(field, "a value the offline Trainer does not compute")
                raise ValueError(
                    f"loss {names} needs LogProbs.{field}: {reason}. The offline Trainer cannot provide it; "
                    "this loss is trained online (see the README, 'Losses that need online data')."
                )

    # ------------------------------------------------------------------------------------------ data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Tokenise like TRL, then report the rows TRL's preparation filters out (it does so silently)."""
        rows_before = len(dataset) if isinstance(dataset, Dataset) else None
        prepared = self._tokenize(dataset, processing_class, args, dataset_name)
        if rows_before is not None:
            dropped = rows_before - len(prepared)
            self.dropped_rows[dataset_name] = dropped
            if dropped:
                logger.warning(
                    "%s dataset: dropped %d of %d rows whose prompt alone fills max_length=%s tokens "
                    "(raise max_length or shorten those prompts to keep them)",
                    dataset_name, dropped, rows_before, args.max_length,
                )
        return prepared

    def _tokenize(self, dataset, processing_class, args, dataset_name):
        first_example = next(iter(dataset))
        if "prompt_ids" in first_example and ("chosen_ids" in first_example or "completions_ids" in first_example):
            return dataset  # already tokenised
        if not is_kwise_example(first_example):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        map_kwargs = {"num_proc": args.dataset_num_proc} if isinstance(dataset, Dataset) else {}
        dataset = dataset.map(
            tokenize_kwise,
            fn_kwargs={"processing_class": processing_class, "eos_token": self._tokenizer.eos_token},
            **map_kwargs,
        )
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length, **map_kwargs)
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        columns = ["completions_ids", REFERENCE_COLUMNS["kwise"]]
        for layouts in FIELD_COLUMNS.values():
            columns += list(layouts["pair"]) + [layouts["kwise"]]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *columns]))

    # ------------------------------------------------------------------------------------ log-probs

    def _forward_logps(self, model, inputs, **extra_kwargs):
        """Sequence log-probs [N] of every row of ``inputs`` under ``model``, and the fused-head outputs."""
        completion_mask = inputs["completion_mask"]
        # --- prefopt.packing hook: prompt shared by its responses / padding-free rows (plain layout otherwise) ---
        layout = self._packed_layout(model, inputs, extra_kwargs)
        if layout is not None:
            outputs = packing.packed_forward(model, layout)
        else:
            model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS and not k.startswith("field_")}
            model_kwargs.update(use_cache=False, **extra_kwargs)
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        per_token_logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :]
        return per_token_logps.sum(dim=1), outputs

    def _packed_layout(self, model, inputs, extra_kwargs) -> packing.PackedLayout | None:
        """The packed layout of ``inputs`` for ``model``, or None (reason in `packing_fallback_reason`) when
        packing is switched off or cannot serve this model or batch. A model is verified once: its packed
        per-token log-probs on the first batch must equal the plain ones (see `packing.mismatch_reason`)."""
        self.packing_fallback_reason = None
        if not (self.args.prefix_sharing or self.args.padding_free):
            return None
        reason = "the forward needs extra outputs (MoE router logits)" if extra_kwargs else None
        reason = reason or self._packing_checked.get(id(model), packing.unsupported_reason(model))
        layout = None
        if reason is None:
            layout = self._layout_for(inputs)
            if isinstance(layout, str):
                reason, layout = layout, None
        if reason is None and id(model) not in self._packing_checked:
            reason = self._verify_packing(model, inputs, layout)
            self._packing_checked[id(model)] = reason
            if reason is None:
                logger.info("packed forward verified for %s", type(model).__name__)
        if reason is not None:
            if (id(model), reason) not in self._packing_logged:
                logger.warning("prefopt: using the plain (unpacked) forward for %s: %s", type(model).__name__, reason)
                self._packing_logged.add((id(model), reason))
            self.packing_fallback_reason = reason
            return None
        return layout

    def _layout_for(self, inputs) -> packing.PackedLayout | str:
        """The batch's packed layout (built once per batch, shared by the policy and reference passes), or why not."""
        switches = (self.args.prefix_sharing, self.args.padding_free)
        cached = self._packed_layout_cache
        if cached is not None and cached[0] is inputs["input_ids"] and cached[1] == switches:
            return cached[2]
        response_index = inputs.get("response_index")
        if response_index is None:
            return "the batch has no `response_index` (a collator other than prefopt's)"
        try:
            layout = packing.build_layout(
                inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), inputs["completion_mask"].cpu(),
                response_index.cpu(), prefix_sharing=self.args.prefix_sharing, padding_free=self.args.padding_free,
                pad_token_id=getattr(self.data_collator, "pad_token_id", None) or 0,
            )
        except ValueError as error:
            return f"the batch cannot be packed: {error}"
        self._packed_layout_cache = (inputs["input_ids"], switches, layout)
        return layout

    @staticmethod
    def _verify_packing(model, inputs, layout) -> str | None:
        was_training = model.training
        model.eval()  # dropout would make the two passes differ
        try:
            with torch.no_grad():
                packed = packing.packed_forward(model, layout).log_probs
                plain = packing.plain_forward_logps(model, inputs)
            return packing.mismatch_reason(packed, plain, inputs["completion_mask"])
        except Exception as error:  # noqa: BLE001 - any failure of the packed pass means: use the plain one
            return f"the packed forward failed ({type(error).__name__}: {error})"
        finally:
            model.train(was_training)

    def _reference_logps(self, inputs) -> torch.Tensor:
        """Sequence log-probs [N] under the reference: `ref_model`, or the policy with its adapter disabled."""
        adapter_context, model = contextlib.nullcontext(), self.ref_model
        if self.ref_model is None:
            model = self.model
            if is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            logps, _ = self._forward_logps(model, inputs)
        return logps

    @staticmethod
    def _as_matrix(values: torch.Tensor, response_index: torch.Tensor) -> torch.Tensor:
        """Per-row values [N] -> [B, K] laid out by ``response_index`` (0 where a row has fewer responses)."""
        real = response_index >= 0
        return values[response_index.clamp(min=0)].masked_fill(~real, 0)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        if not self.preference_loss.needs_reference:
            return dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError("`precompute_ref_log_probs=True` needs a map-style Dataset, not an IterableDataset")
        key = self.reference_fingerprint(dataset)
        values = reference_cache.load(self.args.ref_logps_cache_dir, key)
        if values is None:
            self._reference_misses += 1
            values = self._compute_reference_table(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                reference_cache.save(self.args.ref_logps_cache_dir, key, values)
            self.accelerator.wait_for_everyone()
        else:
            self._reference_hits += 1
        kwise = "completions_ids" in dataset.column_names
        columns = [REFERENCE_COLUMNS["kwise"]] if kwise else list(REFERENCE_COLUMNS["pair"])
        dataset = dataset.remove_columns([c for c in columns if c in dataset.column_names])
        if kwise:
            counts = [len(ids) for ids in dataset["completions_ids"]]
            return dataset.add_column(columns[0], [values[i, :k].tolist() for i, k in enumerate(counts)])
        dataset = dataset.add_column(columns[0], values[:, 0].tolist())
        return dataset.add_column(columns[1], values[:, 1].tolist())

    def _compute_reference_table(self, dataset, name: str, batch_size: int) -> torch.Tensor:
        dataloader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        rows = []
        for batch in self.accelerator.prepare(dataloader):
            matrix = self._as_matrix(self._reference_logps(batch), batch["response_index"])
            rows.append(self.accelerator.gather_for_metrics(matrix).float().cpu())
        width = max(row.size(1) for row in rows)
        return torch.cat([torch.nn.functional.pad(row, (0, width - row.size(1))) for row in rows])

    def reference_fingerprint(self, dataset) -> str:
        """Key of the stored reference log-probs: reference weights + token ids + truncation settings."""
        model = self.accelerator.unwrap_model(self.ref_model if self.ref_model is not None else self.model)
        skip = ()
        if self.ref_model is None and is_peft_model(model):
            skip = set(model.peft_config) - ({"ref"} if "ref" in model.peft_config else set())
        settings = {"max_length": self.args.max_length, "truncation_mode": self.args.truncation_mode}
        return reference_cache.fingerprint(
            reference_cache.module_digest(model, skip),
            reference_cache.rows_digest(dataset, ("prompt_ids", "chosen_ids", "rejected_ids", "completions_ids")),
            settings,
        )

    # ----------------------------------------------------------------------------------------- loss

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        extra = {"output_router_logits": True} if self.aux_loss_enabled else {}
        policy_rows, outputs = self._forward_logps(model, inputs, **extra)
        response_index = inputs.get("response_index")
        if response_index is None:  # a user collator in TRL's layout: chosen rows, then rejected rows
            half = policy_rows.size(0) // 2
            response_index = torch.stack([torch.arange(half), torch.arange(half) + half], 1).to(policy_rows.device)
        real = response_index >= 0
        lengths_rows = inputs["completion_mask"].sum(dim=1)
        fields = {"policy": self._as_matrix(policy_rows, response_index)}
        fields["lengths"] = self._as_matrix(lengths_rows, response_index)
        if self.kwise_data:
            fields["mask"] = real
        if self.preference_loss.needs_reference:
            if "field_reference" in inputs:
                fields["reference"] = inputs["field_reference"].to(policy_rows.dtype)
            elif "ref_chosen_logps" in inputs:  # a TRL collator passing precomputed columns through
                fields["reference"] = torch.stack([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]], 1)
            else:
                fields["reference"] = self._as_matrix(self._reference_logps(inputs), response_index)
        for field in self.preference_loss.required_fields:
            if field not in fields:
                fields[field] = inputs[f"field_{field}"].to(policy_rows.dtype)
        batch = LogProbs(**fields)
        if mode == "train" and batch.reference is not None:
            # for callbacks that keep running statistics of the implicit rewards (e.g. RewardShiftCallback)
            self.latest_log_ratios = (batch.policy - batch.reference).detach()[real]
        per_component = self.preference_loss.components_per_example(batch, per_loss=self.loss_hyperparameters)
        loss = 0.0
        for spec, weight in self.preference_loss.components:
            loss += per_component[spec.name].mean() * weight
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        self._log_metrics(mode, inputs, outputs, batch, response_index, per_component)
        if return_outputs:
            with torch.no_grad():
                model_kwargs = {
                    k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS and not k.startswith("field_")
                }
                outputs = model(**model_kwargs, use_cache=False)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, inputs, outputs, batch, response_index, per_component) -> None:
        """TRL's metric names (best response = "chosen", worst = "rejected" for K-wise) plus `loss/<name>`."""
        metrics, gather = self._metrics[mode], self.accelerator.gather_for_metrics
        shift_mask = inputs["completion_mask"][..., 1:]
        seq_len = shift_mask.size(1)
        real = response_index >= 0
        worst = (real.sum(dim=1) - 1).unsqueeze(1)
        best_rows, worst_rows = response_index[:, 0], response_index.gather(1, worst).squeeze(1)

        entropy_sum = gather((outputs.entropy[:, -seq_len:].detach() * shift_mask).sum()).sum()
        total_tokens = gather(shift_mask.sum()).sum()
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        mean_logits = outputs.mean_logits[:, -seq_len:].detach()
        for label, rows in (("chosen", best_rows), ("rejected", worst_rows)):
            mask = shift_mask[rows].bool()
            total = gather(mean_logits[rows][mask].sum()).sum().item()
            count = gather(mask.sum()).sum().item()
            metrics[f"logits/{label}"].append(total / count if count > 0 else 0.0)
        chosen_mask = shift_mask[best_rows].bool()
        correct = gather((outputs.is_top1[:, -seq_len:][best_rows] & chosen_mask).sum()).sum()
        count = gather(chosen_mask.sum()).sum()
        metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)

        policy = batch.policy.detach()
        log_ratios = policy - batch.reference.detach() if batch.reference is not None else policy
        rewards = self.metric_beta * log_ratios
        chosen_rewards, rejected_rewards = rewards[:, 0], rewards.gather(1, worst).squeeze(1)
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(policy[:, 0]).mean().item())
        metrics["logps/rejected"].append(gather(policy.gather(1, worst).squeeze(1)).mean().item())
        if self.kwise_data:
            # share of adjacent ranked responses whose implicit rewards are in the labelled order
            adjacent = real[:, 1:] & real[:, :-1]
            ordered = ((rewards[:, :-1] > rewards[:, 1:]) & adjacent).sum(dim=1).float()
            metrics["rewards/ranking_accuracy"].append(gather(ordered / adjacent.sum(dim=1).clamp(min=1)).mean().item())
        for name, values in per_component.items():
            metrics[f"loss/{name}"].append(gather(values.detach()).mean().item())

    # ---------------------------------------------------------------------------------- evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._eval_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._eval_prefix = "eval"

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"{self._eval_prefix}_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super(DPOTrainer, self).log(logs, start_time)
        self._metrics[mode].clear()
