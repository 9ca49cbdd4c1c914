"""The one scoring routine of a training run: every `LogProbs` field's log-probs go through `Forward.score`.

    forward = Forward(args, pad_token_id)
    result = forward.score(model, batch)        # SequenceLogProbs: logps [N], lengths [N], outputs

A batch is collated rows (``input_ids``, ``attention_mask``, ``completion_mask`` [N, L]) plus
``response_index`` [B, K]: the rows holding the responses of each example (-1 for padding), so a pair is
two rows of one example and a batch of one sample per prompt is B examples of one row each.

`score` computes per-token log-probs by the packed layout where it serves the model and the batch
(`prefopt.training.packing`: each prompt encoded once for its responses, no padding waste, the LM head on
response tokens only), else by the plain forward with TRL's fused LM head; then sums each row, or, with
``ld_alpha``, takes LD-DPO's length-desensitised sum, whose public length is the shortest response *of the
same example* (so one sample per prompt is summed plainly).

The trainer scores the policy, the reference, pi_t (``previous``), calibration samples, the empty-trace
view and f-DPG's samples through this one routine (`prefopt.training.fields.FieldContext` hands it to the
field providers), so an option that changes log-probs (``ld_alpha``, the packed layout, the collator's
truncation) applies to every field alike.

The packing policy lives here too: whether a model can take the packed layout (static checks, once per
model), whether a batch is shared or laid out one row per response (a cost model, once per batch, shared by
the passes over the same batch), and a check on the first batch of each mask kind that packed and plain
log-probs agree; any failure keeps that model on the plain path, logged once with its reason.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model

from prefopt.logprobs import SequenceLogProbs, token_logps
from prefopt.losses import length_desensitized_logps
from prefopt.training import packing, packing_check

logger = logging.getLogger(__name__)

LOG_PROBS_ONLY = ("log_probs",)


class Forward:
    """Scores batches for one training run (module docstring).

    Args:
        args: the run's settings, read at every call (a `PrefOptConfig`, or anything with its attributes):
            ``prefix_sharing`` and ``padding_free`` (the packing switches), ``ld_alpha`` (LD-DPO's weight of the
            tokens past the example's shortest response; None: the plain sum) and ``use_weighting`` (WPO: the
            policy's pass also computes ``log_sum_sq_probs``).
        pad_token_id: the padding id of packed rows.
        autocast: a context-manager factory for the run's mixed precision (the Trainer sets its accelerator's
            ``autocast``). The plain pass calls the model, whose forward the accelerator wraps in autocast; the packed
            pass calls the backbone and the head directly, so it enters the same autocast itself.
    """

    def __init__(self, args, pad_token_id: int = 0, autocast: Callable[[], Any] = contextlib.nullcontext):
        self.args, self.pad_token_id, self.autocast = args, pad_token_id, autocast
        self.fallback_reason: str | None = None  # why the last score used the plain layout, if it did
        self.last_layout: packing.PackedLayout | None = None  # the packed layout of the last batch packed
        self._layout_key: tuple | None = None  # (input_ids tensor, switches) the last layout was built for
        self._unsupported: dict[int, str | None] = {}  # id(model) -> why it cannot pack at all (None: it may)
        # (id(model), one sequence per row) -> None (verified) or the reason not: the block-mask and the 2D-mask
        # layouts go through different attention paths, so each is verified on its first batch
        self._verified: dict[tuple[int, bool], str | None] = {}
        self._logged: set[tuple[int, str]] = set()  # fallbacks already logged
        self._attention_costs: dict[int, float] = {}  # id(model) -> packing.attention_cost
        self._fused: set[int] = set()  # ids of the causal LMs that carry TRL's fused LM head
        self._twins: dict[int, Any] = {}  # id(model) -> its float32 twin (`packing_check.float32_twin`), built once

    @property
    def metric_outputs(self) -> tuple[str, ...]:
        """The per-token outputs the policy's own pass computes for the trainer's metrics (and WPO's weights)."""
        return packing.METRIC_OUTPUTS + (("log_sum_sq_probs",) if getattr(self.args, "use_weighting", False) else ())

    # --------------------------------------------------------------------------------------- scoring

    def score(self, model, batch: dict[str, Any], *, response_index: torch.Tensor | None = None,
              outputs: tuple[str, ...] = LOG_PROBS_ONLY, **model_kwargs) -> SequenceLogProbs:
        """Sequence log-probs [N] of every row of ``batch`` under ``model`` (with gradient unless called under
        no_grad), response lengths [N], and the forward's per-token ``outputs`` (``outputs.log_probs`` [N, L-1],
        and e.g. ``entropy`` for the metrics). ``response_index`` defaults to ``batch["response_index"]``."""
        if response_index is None:
            if "response_index" not in batch:
                raise ValueError("the batch has no `response_index` (which rows are one example's responses); a "
                                 "field provider's collate must add it, e.g. one row per example: [[0], [1], ...]")
            response_index = batch["response_index"]
        shifted_mask = batch["completion_mask"][..., 1:]
        layout = self._packed_layout(model, batch, model_kwargs)
        if layout is not None:
            with self.autocast():
                result = packing.packed_forward(model, layout, outputs=tuple(dict.fromkeys(("log_probs", *outputs))))
            per_token = result.log_probs[:, -shifted_mask.size(1) :]
        else:
            self._ensure_fused_head(model, outputs)
            per_token, result = token_logps(model, batch, fused_lm_head=True, **model_kwargs)
        ld_alpha = getattr(self.args, "ld_alpha", None)
        if ld_alpha is None:
            logps = per_token.sum(dim=1)
        else:
            logps = length_desensitized_logps(per_token, shifted_mask, response_index, ld_alpha)
        return SequenceLogProbs(logps, shifted_mask.sum(dim=1), result)

    def register_fused_head(self, model) -> None:
        """Note that ``model`` already carries TRL's fused LM head (TRL patches the policy and its ``ref_model``)."""
        if model is not None:
            self._fused.add(id(_causal_lm(model)))

    def _ensure_fused_head(self, model, outputs: tuple[str, ...]) -> None:
        """Give a model the trainer did not build (e.g. a ModelField's pi_t, f-DPG's proposal) TRL's fused LM head,
        so it is scored by the same computation as the policy. Its forward without ``fused_lm_head=True``, and so
        ``generate``, is unchanged."""
        causal_lm = _causal_lm(model)
        if id(causal_lm) in self._fused:
            return
        from trl.trainer.utils import add_fused_lm_head  # deferred: importing TRL takes seconds (start-up time)

        add_fused_lm_head(causal_lm, outputs=tuple(dict.fromkeys(("log_probs", *outputs))))
        self._fused.add(id(causal_lm))

    # ---------------------------------------------------------------------------------- the packing policy

    def _packed_layout(self, model, batch, extra_kwargs) -> packing.PackedLayout | None:
        """The packed layout of ``batch`` for ``model``, or None (reason in `fallback_reason`) when packing is
        switched off or cannot serve this model or batch. A model is verified once per mask kind
        (`packing_check.verify` on the first batch of that kind); a mismatch turns packing off for the model."""
        self.fallback_reason = None
        if not (self.args.prefix_sharing or self.args.padding_free):
            return None
        reason = "the forward needs extra outputs (MoE router logits)" if extra_kwargs else None
        if reason is None:  # the static checks run once per model (they walk its modules: ~6 ms a call)
            if id(model) not in self._unsupported:
                self._unsupported[id(model)] = packing.unsupported_reason(model)
            reason = self._unsupported[id(model)]
        layout = None
        if reason is None:
            layout = self._layout_for(model, batch)
            if isinstance(layout, str):
                reason, layout = layout, None
        if reason is None:
            key = (id(model), layout.one_sequence_per_row)
            if key not in self._verified:
                self._verified[key] = self._verify(model, batch, layout)
                if self._verified[key] is None:
                    logger.info("packed forward verified for %s (%s)", type(model).__name__,
                                "one sequence per row" if key[1] else "block mask")
                else:  # one failed kind is enough to distrust the model's masking: plain for the rest of the run
                    self._unsupported[id(model)] = self._verified[key]
            reason = self._verified[key]
        if reason is not None:
            if (id(model), reason) not in self._logged:
                logger.warning("prefopt: using the plain (unpacked) forward for %s: %s", type(model).__name__, reason)
                self._logged.add((id(model), reason))
            self.fallback_reason = reason
            return None
        return layout

    def _layout_for(self, model, batch) -> packing.PackedLayout | str:
        """The batch's packed layout (built once per batch and shared by every pass over it: the policy and the
        reference have the same architecture, so the same `packing.attention_cost`), or why not."""
        switches = (self.args.prefix_sharing, self.args.padding_free)
        if self._layout_key is not None and self._layout_key[0] is batch["input_ids"] and self._layout_key[1] == switches:
            return self.last_layout
        response_index = batch.get("response_index")
        if response_index is None:
            return "the batch has no `response_index` (a collator other than prefopt's)"
        if id(model) not in self._attention_costs:
            self._attention_costs[id(model)] = packing.attention_cost(model)
        try:
            layout = packing.build_layout(
                batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["completion_mask"].cpu(),
                response_index.cpu(), prefix_sharing=self.args.prefix_sharing, padding_free=self.args.padding_free,
                pad_token_id=self.pad_token_id, attention_cost=self._attention_costs[id(model)],
            )
        except ValueError as error:
            return f"the batch cannot be packed: {error}"
        self._layout_key, self.last_layout = (batch["input_ids"], switches), layout
        return layout

    def _verify(self, model, batch, layout) -> str | None:
        """`packing_check.verify` on the first batch of a mask kind: in float32 where equality is meaningful, and
        in the training precision against the plain path's own noise."""
        was_training = model.training
        model.eval()  # dropout would make the two passes differ
        try:
            with torch.no_grad(), self.autocast():
                self._ensure_fused_head(model, LOG_PROBS_ONLY)
                return packing_check.verify(model, batch, layout, twins=self._twins)
        except torch.OutOfMemoryError:
            raise  # not a property of the layout: the plain pass would run out too (training_step adds advice)
        except Exception as error:  # noqa: BLE001 - any other failure of the packed pass means: use the plain one
            return f"the packed forward failed ({type(error).__name__}: {error})"
        finally:
            model.train(was_training)


def _causal_lm(model):
    model = extract_model_from_parallel(model)
    return model.get_base_model() if is_peft_model(model) else model
