"""`prefopt.Trainer`: `trl.DPOTrainer` with the loss taken from the prefopt registry.

    from prefopt import Trainer, PrefOptConfig
    trainer = Trainer(model, args=PrefOptConfig("out", loss="rdpo", loss_kwargs={"epsilon": 0.2}),
                      train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

Everything TRL does around the loss (model loading, PEFT wrapping, the optimizer loop, logging, saving) is
TRL's. Each hook this class overrides hands off, in a few lines, to a collaborator of `prefopt.training` that
owns its state:

* `rows` (`rows.PreferenceRows`): can these rows feed this loss, with errors naming the rows;
* `preparation` (`batching.PreferencePreparation`): tokenising, counts of dropped and truncated rows, the collator;
* `reference` (`reference.Reference`) and `reference_cache`: which model is pi_ref, its precomputed log-probs;
* `forward` (`forward.Forward`): the one scoring routine (packed or plain, ``ld_alpha``) for every field;
* `fields` (`fields.FieldSet`) with its `field_context`: which provider fills each `LogProbs` field;
* `loss_state` (`state.LossState`): running loss state of callbacks, per-step hyper-parameters, checkpoints;
* `nonfinite` (`nonfinite.NonFiniteGuard`): what a NaN or inf does (on_nonfinite);
* `metrics` (`metrics.StepMetrics`): TRL's metric names every step.

The loss step itself (`_compute_loss`) puts a batch's fields together, checks them, calls the registered
loss through its spec and records the metrics; it never looks at a loss's name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import IterableDataset
from transformers import AutoProcessor, ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import get_config_model_id

from prefopt._quiet import renamed_checkpointing_warnings_ignored
from prefopt.config import PrefOptConfig
from prefopt.logprobs import SequenceLogProbs, model_inputs
from prefopt.losses import LogProbs, combine_losses
from prefopt.training import reference
from prefopt.training.batching import PreferencePreparation
from prefopt.training.fields import FieldContext, FieldProvider, FieldSet
from prefopt.training.forward import Forward
from prefopt.training.metrics import StepMetrics, UnfinishedDataloaders
from prefopt.training.nonfinite import NonFiniteError, NonFiniteGuard, check_inputs, check_losses
from prefopt.training.oom import advise_on_out_of_memory
from prefopt.training.rows import PreferenceRows, first_row, is_kwise_example
from prefopt.training.state import BindsTrainer, LossState
from prefopt.training.summary import training_summary

logger = logging.getLogger(__name__)


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
    losses that need no reference never run one (the copy is dropped). TRL's loss modifiers are registry
    building blocks: `ld_alpha` (`prefopt.losses.length_desensitized_logps`), `use_weighting`
    (`LogProbs.weights` from `prefopt.losses.wpo_weights`) and `f_divergence_type` (`prefopt.losses.f_divergence`,
    applied by `combine_losses` to every loss registered with `log_ratio_form=True`).
    Callbacks that define `bind_trainer(trainer)` (`prefopt.training.state.BindsTrainer`) are given the trainer
    after construction. `ref_model` may also be a `prefopt.training.reference.Reference` (e.g. the adapter-disabled
    base of a PEFT policy, as the round loop asks for).

    prefopt's one extra argument, `field_providers`, adds or replaces `prefopt.training.fields.FieldProvider`s
    (which LogProbs fields can be filled and from where), so a method can feed its loss without a
    new trainer.
    """

    _tag_names = ["trl", "dpo", "prefopt"]
    _name = "PrefOpt"
    # collaborators a trainer of other rows replaces (f-DPG's trains on prompts: PromptRows, PromptPreparation)
    rows_class = PreferenceRows  # row checks (prefopt.training.rows)
    preparation_class = PreferencePreparation  # tokenising, counts of dropped and truncated rows, the collator

    @renamed_checkpointing_warnings_ignored()  # PEFT's get_peft_model, called by TRL with peft_config
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
        field_providers: list[FieldProvider] | None = None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PrefOptConfig(f"{model_name.split('/')[-1] or 'model'}-PrefOpt")
        elif not isinstance(args, PrefOptConfig):
            args = _as_prefopt_config(args)
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        self.preference_loss = combine_losses(
            args.loss_components(),
            f_divergence=args.f_divergence_type,
            f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        )
        self.loss_hyperparameters = args.loss_hyperparameters()
        first_example = first_row(train_dataset, "train")
        if "image" in first_example or "images" in first_example:
            raise NotImplementedError("prefopt.Trainer handles text datasets only; use trl.DPOTrainer for vision data")
        self.kwise_data = is_kwise_example(first_example)
        self.fields = FieldSet(self.preference_loss.required_fields, field_providers, kwise=self.kwise_data,
                               use_weighting=args.use_weighting)
        self.field_providers = self.fields.by_field  # field name -> its provider
        self.rows = self.rows_class(self.preference_loss, self.fields, self.kwise_data)
        self.rows.check_first(first_example)
        train_dataset = self.rows.check_every_row(train_dataset, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: self.rows.check_every_row(value, f"eval {key!r}") for key, value in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self.rows.check_every_row(eval_dataset, "eval")
        self.reference_cache = reference.ReferenceCache(args.ref_logps_cache_dir)  # precompute_ref_log_probs' store
        self.nonfinite = NonFiniteGuard(args)  # on_nonfinite: raise, stop or skip (prefopt.training.nonfinite)
        self.preparation = self.preparation_class(self.fields)  # tokenising, drop and truncation counts, columns

        # pi_ref: `prefopt.training.reference` decides what TRL gets and, once TRL has built the trainer, which it is
        self._requested_reference = ref_model
        self._had_ref_adapter = not isinstance(model, str) and is_peft_model(model) and reference.REF_ADAPTER in model.peft_config
        self._reference_copied = False
        ref_model, self._reference_copied = reference.model_for_trl(model, ref_model, args, peft_config, quantization_config)
        self.reference: reference.Reference | None = None  # settled once TRL has set self.model / self.ref_model

        if data_collator is None:
            if processing_class is None:
                model_id = model if isinstance(model, str) else get_config_model_id(model.config)
                processing_class = AutoProcessor.from_pretrained(model_id, trust_remote_code=args.trust_remote_code)
            tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
            tokenizer.pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
            data_collator = self.preparation.collator(args, tokenizer, self.fields.batch_providers)
        # the one scoring routine of the run: every LogProbs field's log-probs go through it
        self.forward = Forward(args, pad_token_id=getattr(data_collator, "pad_token_id", None) or 0)
        self.field_context: FieldContext | None = None  # built with the reference, once TRL has set the models
        # TRL 1.16 logs that its own `padding_free` is disabled; prefopt.training.packing implements it, so drop that message
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
        self.forward.autocast = self.accelerator.autocast  # the packed pass calls the backbone, not the wrapped forward
        self._settle_reference()
        self._eval_prefix = "eval"
        first_hyperparameters = self.loss_hyperparameters[self.preference_loss.names[0]]
        self.metric_beta = first_hyperparameters.get("beta", args.beta if args.beta is not None else 0.1)
        # TRL's metric names every step (prefopt.training.metrics), in TRL's own store so TRL-style code reads them
        self.metrics = StepMetrics(self._metrics, self.accelerator.gather_for_metrics, beta=self.metric_beta,
                                   kwise=self.kwise_data, tensor_parallel_size=self._tp_size)
        self.train_dataset = self.fields.bind(self.field_context, self.train_dataset)
        # the loss state is read from the callback list itself, so callbacks added later (add_callback) count too
        self.loss_state = LossState(self.callback_handler.callbacks, self.loss_hyperparameters)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, BindsTrainer):
                callback.bind_trainer(self)

    @property
    def packing_fallback_reason(self) -> str | None:
        """Why the last forward used the plain (unpacked) layout, or None (`prefopt.training.forward`)."""
        return self.forward.fallback_reason

    def train(self, *args, **kwargs):
        """`transformers.Trainer.train`; a run ended by a non-finite value (on_nonfinite="stop") says so again at
        the end and in the returned metrics (``nonfinite_stopped_at_step``)."""
        self.nonfinite.reset()
        with UnfinishedDataloaders(self.accelerator.gradient_state):  # a stop at max_steps must not skew later metrics
            output = super().train(*args, **kwargs)
        self.nonfinite.report_end(output, self.state.max_steps)
        return output

    @property
    def nonfinite_stop(self) -> dict[str, Any] | None:
        """on_nonfinite="stop": what stopped training (``{"step", "where", "rows", "message"}``), None while all is finite."""
        return self.nonfinite.stop

    def summary(self):
        """Held-out metrics, dropped / truncated rows and timing as a small table (see `prefopt.training.summary`)."""
        return training_summary(self)

    def _settle_reference(self) -> reference.Reference:
        """`self.reference` (`prefopt.training.reference.settle`) and the providers' `FieldContext`, decided once TRL
        has set the policy and its ``ref_model``: TRL's precomputation needs them before TRL's constructor returns.
        ``self.ref_model`` (TRL's attribute) follows the reference: a copy no loss needs is freed."""
        if self.reference is None:
            self.reference = reference.settle(
                self.model, self.ref_model, requested=self._requested_reference, copied=self._reference_copied,
                needs_reference=self.preference_loss.needs_reference, had_ref_adapter=self._had_ref_adapter,
                checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            )
            self.ref_model = self.reference.model
            for model in (self.model, self.ref_model):  # TRL gave both its fused LM head
                self.forward.register_fused_head(model)
            self.field_context = FieldContext(
                tokenizer=self._tokenizer, max_length=self.args.max_length, truncation_mode=self.args.truncation_mode,
                device=self.accelerator.device, collator=self.data_collator, score=self.forward.score,
                reference=self.reference, autocast=self.accelerator.autocast, policy=self.model,
            )
        return self.reference

    # ------------------------------------------------------------------------------------------ data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's hook: tokenise (TRL for pairs) and count what is dropped or truncated (`prefopt.training.batching`)."""
        return self.preparation.prepare(
            dataset, dataset_name, args, processing_class=processing_class, eos_token=self._tokenizer.eos_token,
            tokenize_pairs=lambda rows: super(Trainer, self)._prepare_dataset(rows, processing_class, args, dataset_name),
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = self.preparation.signature_columns(self._signature_columns)

    def prepare_dataset(self, dataset, name: str = "eval"):
        """``dataset`` checked row by row and tokenised as this trainer trains on it, e.g. a held-out set to pass to
        ``evaluate`` again and again (`prefopt.callbacks.PreferenceEvalCallback`)."""
        dataset = self.rows.check_every_row(dataset, name)
        return self._prepare_dataset(dataset, self.processing_class, self.args, name)

    @property
    def dropped_rows(self) -> dict[str, int]:
        """Dataset name -> rows filtered out during preparation (the prompt alone fills max_length)."""
        return self.preparation.dropped_rows

    @property
    def truncated_rows(self) -> dict[str, dict[str, int]]:
        """Dataset name -> rows max_length cuts, per reason (`prefopt.training.batching.truncation_reasons`)."""
        return self.preparation.truncated_rows

    # ------------------------------------------------------------------------------------ log-probs

    @staticmethod
    def _response_index(inputs) -> torch.Tensor:
        """``inputs["response_index"]``, or TRL's layout (chosen rows, then rejected rows) for a TRL collator."""
        if "response_index" in inputs:
            return inputs["response_index"]
        half = inputs["input_ids"].size(0) // 2
        return torch.stack([torch.arange(half), torch.arange(half) + half], 1).to(inputs["input_ids"].device)

    def batch_fields(self, model, inputs) -> tuple[dict[str, torch.Tensor], SequenceLogProbs]:
        """The `LogProbs` fields the loss sees for ``inputs`` (policy forward under ``model``, with gradient when
        called so, and every provider's fields), and the policy's forward result."""
        extra = {"output_router_logits": True} if self.aux_loss_enabled else {}
        response_index = self._response_index(inputs)
        policy = self.forward.score(model, inputs, response_index=response_index, outputs=self.forward.metric_outputs, **extra)
        self.field_context.policy = model  # the model as this step runs it (wrapped for distributed training)
        return self.fields.collect(self.field_context, inputs, response_index, policy), policy

    def reference_logps(self, inputs) -> torch.Tensor:
        """Sequence log-probs [N] of ``inputs`` under the reference, by the run's one scoring routine."""
        self._settle_reference()
        return self.field_context.reference_logps(inputs, self._response_index(inputs))

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        if isinstance(dataset, IterableDataset):
            raise ValueError(  # TRL's wording, so code written against trl.DPOTrainer's errors keeps working
                "`precompute_ref_log_probs=True` is not supported with IterableDataset. Please use a map-style "
                f"Dataset or set `precompute_ref_log_probs=False`. (prefopt: the {name!r} dataset is an IterableDataset; "
                "precomputed reference log-probs are stored per row, which needs random access.)"
            )
        if not self.preference_loss.needs_reference:
            return dataset
        return self.reference_cache.add_columns(
            dataset, name, key=self.reference_fingerprint(dataset),
            compute=lambda: reference.reference_table(dataset, batch_size, self.data_collator, self.accelerator, self.reference_logps),
            is_main_process=self.accelerator.is_main_process, wait_for_everyone=self.accelerator.wait_for_everyone,
        )

    def reference_fingerprint(self, dataset) -> str:
        """Key of the stored reference log-probs: reference weights + token ids + truncation settings."""
        settings = {"max_length": self.args.max_length, "truncation_mode": self.args.truncation_mode}
        if self.args.ld_alpha is not None:  # LD-DPO changes the sequence log-probs themselves
            settings["ld_alpha"] = self.args.ld_alpha
        return reference.fingerprint(self._settle_reference(), dataset, settings)

    # ----------------------------------------------------------------------------------------- loss

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        fields, policy = self.batch_fields(model, inputs)
        outputs, response_index = policy.outputs, self._response_index(inputs)
        step = self.state.global_step + (mode == "train")  # the optimizer step this batch belongs to
        try:
            check_inputs(step, fields, context=mode)
            batch = LogProbs(**fields)
            if mode == "train":
                self.loss_state.before_loss(self, batch)
            step_hyperparameters = self.step_hyperparameters()
            per_component = self.preference_loss.components_per_example(batch, per_loss=step_hyperparameters)
            loss = 0.0
            for spec, weight in self.preference_loss.components:
                loss = loss + per_component[spec.name].mean() * weight
            check_losses(step, per_component, loss, context=mode)
        except NonFiniteError as error:
            if not self.nonfinite.handles(mode):
                raise
            loss = self.nonfinite.skip_batch(error, step, policy.logps, self.control)
            return (loss, outputs) if return_outputs else loss
        if mode == "train":
            self.loss_state.observe(LogProbs(**{name: value.detach() for name, value in fields.items()}))
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self.metrics.record_aux_loss(mode, outputs.aux_loss)
        self.metrics.record(mode, inputs, outputs, batch, response_index, per_component, step_hyperparameters)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_inputs(inputs), use_cache=False)
        return (loss, outputs) if return_outputs else loss

    # ----------------------------------------------------------------------------------- loss state

    def step_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """The hyper-parameters of this step: the resolved config overlaid with running loss state
        (`prefopt.training.state.LossState`, e.g. BCO's delta)."""
        return self.loss_state.step_hyperparameters()

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            self.loss_state.save(os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.loss_state.load(resume_from_checkpoint)

    # ---------------------------------------------------------------------------------- evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if isinstance(eval_dataset, dict):  # one pass per split, each logged under its own prefix (as TRL's keys)
            metrics = {}
            for name, dataset in eval_dataset.items():
                metrics.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        self._eval_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._eval_prefix = "eval"

    def training_step(self, *args, **kwargs):
        """TRL's step, guarded: an out-of-memory error comes back with advice for this run (batch size,
        checkpointing, ...); a non-finite value raises, ends training (on_nonfinite="stop") or skips the batch
        (its loss reads NaN, which transformers' `logging_nan_inf_filter` keeps out of the logged mean)."""
        stopped = self.nonfinite.before_step(self.model, self.args.device)  # stopping: the rest of the window trains nothing
        if stopped is not None:
            return stopped
        with advise_on_out_of_memory(self):
            loss = super().training_step(*args, **kwargs)
        return self.nonfinite.after_step(self.model, loss, self.state.global_step + 1, self.control)

    def log_values(self, values: dict[str, float]) -> None:
        """Log ``values`` now (the log history and every ``report_to`` tracker), leaving the step metrics this
        trainer gathers for its next logging step untouched: for callbacks and loops that measure something of
        their own (win rates, round metrics)."""
        super(DPOTrainer, self).log(dict(values))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self.metrics.averages(mode)
        if mode == "eval":
            metrics = {f"{self._eval_prefix}_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        if mode == "train" and "loss" in logs:
            self.nonfinite.add_to_log(logs)
        super(DPOTrainer, self).log(logs, start_time)
        self.metrics.clear(mode)
