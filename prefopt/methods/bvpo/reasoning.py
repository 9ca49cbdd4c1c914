"""Reasoning traces for BVPO: the thinking format, the empty-trace view, and the auto mixing weight.

BVPO (Zhu et al. 2025, arXiv:2510.05095; loss ``bvpo``) trains on two preference sets built from the
same prompts:

* the **trace view**: ``chosen`` / ``rejected`` generated with reasoning on, each a reasoning trace
  followed by the answer (``"<think>2 + 3 = 5</think>The answer is 5."``), scored jointly;
* the **empty-trace view**: ``chosen_no_trace`` / ``rejected_no_trace`` generated with reasoning off
  (the thinking block present but empty) and scored that way.

Rows are TRL preference rows (plain text or conversational) with the two extra columns. `EmptyTraceField`
is the field provider that feeds the empty-trace view to `prefopt.Trainer` (``empty_policy`` with
gradient, ``empty_reference`` without), in the same step as the trace view; it is the default provider
of those fields, so ``PrefOptConfig(loss="bvpo")`` on such rows just trains. `Thinking` says how an
(empty) thinking block is written: between tags in the response (default ``<think>...</think>``,
the empty block being Qwen3's ``"<think>\\n\\n</think>\\n\\n"``), or by a chat template's own switch
(``Thinking(template_switch="enable_thinking")``: the template, rendered with the switch off, writes
the empty block itself).

Building such rows: `annotate_views` samples from the same model with reasoning on and off (`ThinkingTokenizer`
switches it: the template's switch, or the empty block appended to the generation prompt) and labels each set
with a reward through `prefopt.online.annotate`.

Only trace pairs? ``EmptyTraceField(from_trace_pairs=True)`` scores the trace pairs' own answers
behind an empty block. That is an approximation the paper does not make (its empty-trace answers are
generated with reasoning off, so they differ from the traced answers); it is used only when asked for,
and says so in a warning.

``alpha="auto"``: `AutoAlphaCallback` estimates the MSE-optimal mixing weight every step from
per-micro-batch gradients of the two views (`auto_alpha`; the estimator is prefopt's own, see its
docstring); the trainer logs it every step (``hyperparameters/bvpo/alpha``, fixed or estimated).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from prefopt.callbacks import LossStateCallback
from prefopt.logprobs import as_matrix
from prefopt.training.fields import FieldProvider
from prefopt.chat import Thinking, ThinkingTokenizer, is_conversational, prompt_key, response_text, with_response_text
from prefopt.logprobs import encode, pad_sequences, sequence_logps
from prefopt.online.annotation import ANNOTATION_SAMPLES, Annotation, annotate
from prefopt.online.sampling import SamplingConfig

logger = logging.getLogger(__name__)

EMPTY_VIEW_COLUMNS = ("chosen_no_trace", "rejected_no_trace")


class EmptyTraceField(FieldProvider):
    """``empty_policy`` / ``empty_reference``: every pair's empty-trace view, scored under the policy (with
    gradient) and the reference in the same training step as the trace view.

    Args:
        thinking: the thinking format (`Thinking`); default ``<think>...</think>`` tags.
        columns: the empty-trace (chosen, rejected) columns; default ``chosen_no_trace``, ``rejected_no_trace``.
        from_trace_pairs: build the empty-trace view from the trace pairs themselves (their answers behind an
            empty block) when the data has no empty-trace columns. An approximation, only when asked for.
    """

    fields = ("empty_policy", "empty_reference")

    def __init__(self, thinking: Thinking | None = None, *, columns: tuple[str, str] = EMPTY_VIEW_COLUMNS,
                 from_trace_pairs: bool = False):
        self.thinking = thinking or Thinking()
        self.pair = tuple(columns)
        self.from_trace_pairs = from_trace_pairs
        self.source = (
            "the trace pairs' answers behind an empty thinking block (approximation, from_trace_pairs=True)"
            if from_trace_pairs
            else f"columns {self.pair[0]!r}/{self.pair[1]!r}: answers generated with reasoning off, behind an empty block"
        )
        self.tokenizer, self.max_length, self._warned = None, None, False

    def columns(self) -> tuple[str, ...]:
        return ("prompt", "chosen", "rejected", *self.pair)

    def check(self, example: Mapping[str, Any], kwise: bool, losses: Sequence[str]) -> None:
        if kwise:
            raise ValueError(f"loss {list(losses)}: the empty-trace view is defined for pairs, not K-wise rows")
        if "prompt" not in example:
            raise ValueError(f"loss {list(losses)}: the empty-trace view needs the untokenised 'prompt' column")
        if self.from_trace_pairs:
            missing = [column for column in ("chosen", "rejected") if column not in example]
            if missing:
                raise ValueError(f"loss {list(losses)}: from_trace_pairs=True reads the trace pairs, the dataset lacks {missing}")
            return
        missing = [column for column in self.pair if column not in example]
        if missing:
            raise ValueError(
                f"loss {list(losses)} needs LogProbs.empty_policy/empty_reference, the empty-trace view: answers generated "
                f"with reasoning off, read from dataset columns {list(self.pair)}; the dataset lacks {missing}. Build them "
                "with prefopt.methods.bvpo.reasoning.annotate_views, or, with trace pairs only, pass field_providers="
                "[EmptyTraceField(from_trace_pairs=True)] (an approximation: the traced answers behind an empty block)"
            )
        if self.thinking.template_switch and not is_conversational(example["prompt"]):
            raise ValueError(
                f"Thinking(template_switch={self.thinking.template_switch!r}) renders the empty block with the chat "
                "template, which needs conversational rows; plain-text rows use the thinking tags"
            )

    def bind(self, trainer) -> None:
        self.tokenizer = trainer._tokenizer
        self.max_length = trainer.args.max_length
        if self.from_trace_pairs and not self._warned:
            logger.warning(
                "BVPO empty-trace view built from the trace pairs (from_trace_pairs=True): their answers are scored "
                "behind an empty thinking block. This approximates the paper's empty-trace pairs, which are answers "
                "generated with reasoning off."
            )
            self._warned = True

    def empty_view(self, example: Mapping[str, Any], row: int | None = None) -> tuple[Any, list[Any], dict[str, Any]]:
        """``(prompt, [chosen, rejected], chat_template_kwargs)`` of one row's empty-trace view, as scored."""
        sources = ("chosen", "rejected") if self.from_trace_pairs else self.pair
        responses = []
        for column in sources:
            response = example[column]
            trace, answer = self.thinking.split(response_text(response))
            if trace and not self.from_trace_pairs:
                where = f"row {row}, " if row is not None else ""
                raise ValueError(
                    f"{where}column {column!r}: an empty-trace response must have an empty (or no) thinking block, "
                    f"got the trace {trace[:40]!r}"
                )
            text = answer if self.thinking.template_switch else self.thinking.empty_block + answer
            responses.append(with_response_text(response, text))
        options = {self.thinking.template_switch: False} if self.thinking.template_switch else {}
        return example["prompt"], responses, options

    def collate(self, examples, kwise, num_responses):
        sequences = [[], []]  # chosen rows, then rejected rows, as the trace view
        for row, example in enumerate(examples):
            prompt, responses, options = self.empty_view(example, row)
            prompt_ids, completions = encode(
                self.tokenizer, prompt, responses, eos_token=self.tokenizer.eos_token, chat_template_kwargs=options
            )
            for k, completion_ids in enumerate(completions):
                sequences[k].append((prompt_ids, completion_ids))
        pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        padded = pad_sequences(sequences[0] + sequences[1], pad_token_id, max_length=self.max_length)
        return {f"field_empty/{key}": value for key, value in padded.items()}

    def provide(self, trainer, inputs, response_index):
        batch = {key[len("field_empty/") :]: value for key, value in inputs.items() if key.startswith("field_empty/")}
        if not batch:
            raise ValueError("the batch has no 'field_empty/...' entries: a custom data_collator must call EmptyTraceField.collate")
        size = batch["input_ids"].size(0) // 2
        layout = torch.stack([torch.arange(size), torch.arange(size) + size], 1).to(batch["input_ids"].device)
        policy = sequence_logps(trainer.model, batch, fused_lm_head=True).logps
        return {"empty_policy": as_matrix(policy, layout), "empty_reference": as_matrix(trainer.reference_logps(batch), layout)}


# ------------------------------------------------------------------------- building data: annotate twice


def annotate_views(prompts, policy, tokenizer, reward, *, thinking: Thinking | None = None,
                   pairing: str = "best_vs_random", sampling: SamplingConfig | None = None,
                   max_new_tokens_without_trace: int | None = None, progress: bool = True, **sampling_options):
    """BVPO rows built as the paper builds them: ``n`` samples per prompt with reasoning on (trace pairs) and
    ``n`` with reasoning off (empty-trace pairs) from the same ``policy``, each set labelled with ``reward`` by
    `prefopt.online.annotate` (pairwise ``pairing``), joined by prompt.

    Sampling settings are `prefopt.online.annotate`'s (a `SamplingConfig` and/or keyword options such as
    ``n=4, max_new_tokens=256, seed=0``); reasoning traces are long, so a larger ``max_new_tokens`` than the
    default is usual, and ``max_new_tokens_without_trace`` can set a shorter one for the empty-trace view.

    Returns a `prefopt.online.Annotation` whose rows hold ``prompt``, ``chosen``/``rejected`` (+ scores) and
    ``chosen_no_trace``/``rejected_no_trace`` (+ ``score_chosen_no_trace``/``score_rejected_no_trace``), ready for
    ``PrefOptConfig(loss="bvpo")`` with ``EmptyTraceField(thinking)``. Its report has each view's annotation
    report and ``prompts_without_both`` (prompts left out because one view had only tied samples)."""
    if pairing == "ranked":
        raise ValueError("annotate_views builds pairs (BVPO is pairwise); use pairing 'best_vs_random' or 'best_vs_worst'")
    thinking = thinking or Thinking()
    if sampling is None:
        sampling_options.setdefault("n", ANNOTATION_SAMPLES)
    trace_sampling = SamplingConfig.of(sampling, **sampling_options)
    views = {}
    for name, reasoning, view_sampling in (("trace", True, trace_sampling),
                                           ("empty", False, trace_sampling.replace(max_new_tokens=max_new_tokens_without_trace))):
        views[name] = annotate(prompts, policy, ThinkingTokenizer(tokenizer, thinking, reasoning=reasoning), reward,
                               pairing=pairing, sampling=view_sampling, progress=progress)
    empty_rows = {prompt_key(row["prompt"]): row for row in views["empty"].rows}
    rows = []
    for row in views["trace"].rows:
        empty = empty_rows.get(prompt_key(row["prompt"]))
        if empty is None:
            continue
        rows.append({**row, "chosen_no_trace": empty["chosen"], "rejected_no_trace": empty["rejected"],
                     "score_chosen_no_trace": empty["score_chosen"], "score_rejected_no_trace": empty["score_rejected"]})
    report = {"prompts": len(prompts), "rows": len(rows), "prompts_without_both": len(prompts) - len(rows),
              "trace": views["trace"].report, "empty_trace": views["empty"].report}
    if report["prompts_without_both"]:
        logger.warning("annotate_views: %d of %d prompts left out (one view had no untied pair)",
                       report["prompts_without_both"], len(prompts))
    return Annotation(rows, report)


# ------------------------------------------------------------------------------------ alpha = "auto"


def auto_alpha(trace_gradients: torch.Tensor, empty_gradients: torch.Tensor) -> float:
    """MSE-optimal weight of the trace view from per-micro-batch gradients [M, P] of the two views.

    The mixed gradient a g_t + (1 - a) g_e has mean squared error E||g_e + a (g_t - g_e) - g||^2 to the
    unbiased gradient g, minimised at

        a* = E<g_e - g, g_e - g_t> / E||g_t - g_e||^2,   clipped to [0, 1],

    with g approximated by the mean trace gradient over the M micro-batches (the trace view is the unbiased
    one) and E by the mean over micro-batches. This estimator is prefopt's own (LOSSES.md, BVPO), not the
    paper's: the paper derives the optimal alpha from the two views' bias and variance but gives no
    estimator for training. When the two views' gradients coincide on every micro-batch any weight gives
    the same gradient and 1.0 (the unbiased view) is returned.
    """
    if trace_gradients.shape != empty_gradients.shape or trace_gradients.dim() != 2:
        raise ValueError(
            f"auto_alpha takes [micro-batches, parameters] gradients of equal shape, got "
            f"{tuple(trace_gradients.shape)} and {tuple(empty_gradients.shape)}"
        )
    if trace_gradients.size(0) < 2:
        raise ValueError("alpha='auto' needs at least 2 micro-batches per step to estimate gradient statistics")
    trace, empty = trace_gradients.double(), empty_gradients.double()
    unbiased = trace.mean(dim=0, keepdim=True)
    difference = empty - trace
    denominator = (difference * difference).sum(dim=1).mean()
    if denominator <= 0:
        return 1.0
    numerator = ((empty - unbiased) * difference).sum(dim=1).mean()
    alpha = (numerator / denominator).item()  # a* of LOSSES.md (BVPO), prefopt's estimator
    if alpha != alpha:
        raise ValueError("alpha='auto': the gradient statistics are not finite (NaN); check the log-probs of this batch")
    return min(1.0, max(0.0, alpha))


class AutoAlphaCallback(LossStateCallback):
    """BVPO ``alpha="auto"``: before every training step's loss, the batch is split into ``micro_batches``
    groups of pairs (default: 4, or one per pair in smaller batches); each group's gradient of the trace-view loss and of the empty-trace-view loss
    (the ``bvpo`` loss at alpha = 1 and 0) over the trainable parameters feeds `auto_alpha`, and the step
    trains with the result. Costs 2 x micro_batches extra backward passes per step.

        Trainer(..., args=PrefOptConfig(loss="bvpo", loss_kwargs={"alpha": "auto"}), callbacks=[AutoAlphaCallback()])

    The last value is kept in ``alpha`` and logged every step (``hyperparameters/bvpo/alpha``, as every loss
    hyper-parameter); it is part of the checkpoint. An evaluation before the first training step uses alpha = 1.
    """

    def __init__(self, loss: str = "bvpo", micro_batches: int | None = None):
        if micro_batches is not None and micro_batches < 2:
            raise ValueError(f"micro_batches must be >= 2 (gradient statistics need several), got {micro_batches}")
        self.loss, self.micro_batches = loss, micro_batches
        self.alpha: float | None = None
        self.trainer = None

    def bind_trainer(self, trainer) -> None:
        if self.loss not in trainer.preference_loss.names:
            raise ValueError(f"AutoAlphaCallback: loss {self.loss!r} is not trained here {list(trainer.preference_loss.names)}")
        if trainer.loss_hyperparameters[self.loss].get("alpha") != "auto":
            raise ValueError(f"AutoAlphaCallback estimates alpha, but loss {self.loss!r} is configured with a fixed "
                             f"alpha={trainer.loss_hyperparameters[self.loss].get('alpha')!r}; set alpha='auto'")
        self.trainer = trainer

    def before_loss(self, trainer, batch) -> None:
        from prefopt.losses import get_loss

        spec = get_loss(self.loss)
        hyperparameters = {**trainer.loss_hyperparameters[self.loss]}
        parameters = [p for p in trainer.model.parameters() if p.requires_grad]
        groups = torch.arange(batch.batch_size).chunk(self.micro_batches or min(4, batch.batch_size))
        if len(groups) < 2:
            raise ValueError(f"alpha='auto' needs at least 2 pairs per step (micro-batches), got {batch.batch_size}")
        gradients = {1.0: [], 0.0: []}
        for view in gradients:
            per_example = spec(batch, **{**hyperparameters, "alpha": view})
            for group in groups:
                grads = torch.autograd.grad(per_example[group].mean(), parameters, retain_graph=True, allow_unused=True)
                gradients[view].append(torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).detach().float()
                    for g, p in zip(grads, parameters)
                ]))
        self.alpha = auto_alpha(torch.stack(gradients[1.0]), torch.stack(gradients[0.0]))

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        # an evaluation before the first training step scores with the trace view alone (alpha = 1)
        return {self.loss: {"alpha": 1.0 if self.alpha is None else self.alpha}}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = state["alpha"]
