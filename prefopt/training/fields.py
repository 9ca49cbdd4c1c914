"""Field providers: which `LogProbs` fields `prefopt.Trainer` can fill, and from where.

The trainer's own step computes ``policy``, ``lengths`` and ``mask`` (the policy forward); every other
field comes from a provider. A provider says which field(s) it fills and from where, checks at
construction that it can (raising with the field and the column to add), may precompute columns of the
training data once (``prepare_train_dataset``), may add entries to each collated batch (``collate``), and
fills its fields at every step (``provide``). A method plugs in the providers it needs without editing the
trainer:

    from prefopt.training.fields import ModelField
    Trainer(model, args=PrefOptConfig("out", loss="inpo"), train_dataset=pairs, processing_class=tokenizer,
            field_providers=[ModelField("previous", previous_policy)])   # pi_t log-probs by a forward pass

Providers receive a `FieldContext`, never the trainer: the tokenizer and collation settings, the device,
the collator, and the run's one scoring routine (`prefopt.training.forward.Forward`) for the policy, the
reference and any other model, so every field is scored the same way (``ld_alpha``, the packed layout).

Providers given to the trainer replace the default provider of the same field. The defaults
(`default_providers`) read dataset columns (``scores``, ``previous``), run the reference (``reference``),
score BVPO's empty-trace view (`EmptyTraceField`), and, for fields no offline dataset can hold, raise with the
reason (`Unavailable`). `RoundStartLogps` and `CalibrationPolicyField` are the round loop's
(`prefopt.online.rounds`): fields precomputed once per round, and online VPO's calibration sample.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from prefopt.chat import Thinking, is_conversational, response_text, with_response_text
from prefopt.logprobs import SequenceLogProbs, as_matrix, encode, pad_sequences
from prefopt.losses import wpo_weights
from prefopt.losses._batch import LOGPROBS_FIELDS
from prefopt.training.reference import REFERENCE_COLUMNS, Reference
from prefopt.training.rows import is_kwise_example

logger = logging.getLogger(__name__)

# Fields the training step computes itself from the policy forward, for every loss.
STEP_FIELDS = {
    "policy": "the policy forward (sum of response-token log-probs)",
    "lengths": "the policy forward's response token counts",
    "mask": "the collator (K-wise rows with fewer responses than the batch's K)",
    "weights": "the policy forward's fused-head outputs, when `use_weighting` is set (WPO weights)",
}
EMPTY_VIEW_COLUMNS = ("chosen_no_trace", "rejected_no_trace")


def sub_batch(inputs: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries a provider collated under ``prefix`` (e.g. ``field_calibration/``), without the prefix."""
    return {key[len(prefix) :]: value for key, value in inputs.items() if key.startswith(prefix)}


def one_row_per_example(size: int) -> torch.Tensor:
    """``response_index`` of a batch holding one response per example: [[0], [1], ..., [size - 1]]."""
    return torch.arange(size).unsqueeze(1)


@dataclass
class FieldContext:
    """What a field provider may use, handed to it by the trainer (never the trainer itself).

    ``tokenizer``, ``max_length`` and ``truncation_mode`` are the run's collation settings, ``device`` where
    batches live, ``collator`` the run's data collator. ``score`` is the run's one scoring routine
    (`prefopt.training.forward.Forward.score`), ``reference`` its pi_ref (`prefopt.training.reference.Reference`),
    ``autocast`` the run's mixed-precision context, and ``policy`` the model being trained as the current step
    runs it (the trainer sets it before the providers run)."""

    tokenizer: Any
    max_length: int | None
    truncation_mode: str
    device: torch.device
    collator: Callable
    score: Callable[..., SequenceLogProbs]
    reference: Reference
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    policy: Any = None

    def policy_logps(self, batch: Mapping[str, Any], response_index: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence log-probs [N] of ``batch`` under the policy, with gradient (inside the training step)."""
        return self.score(self.policy, batch, response_index=response_index).logps

    def reference_logps(self, batch: Mapping[str, Any], response_index: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence log-probs [N] of ``batch`` under the reference, without gradient."""
        with self.reference.active() as model, self.autocast():
            return self.score(model, batch, response_index=response_index).logps

    def model_logps(self, model, batch: Mapping[str, Any], response_index: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence log-probs [N] of ``batch`` under any other model (or the policy as it is), without gradient."""
        with torch.no_grad(), self.autocast():
            return self.score(model, batch, response_index=response_index).logps


class FieldProvider:
    """Base class: fills ``fields`` (LogProbs field names); ``source`` says from where (docs, errors)."""

    fields: tuple[str, ...] = ()
    source: str = ""

    def columns(self) -> tuple[str, ...]:
        """Dataset columns the trainer must keep for this provider (TRL drops unknown columns)."""
        return ()

    def check(self, example: Mapping[str, Any], kwise: bool, losses: Sequence[str]) -> None:
        """Raise a ValueError naming the field and what to add when this provider cannot serve the data."""

    def bind(self, context: FieldContext) -> None:
        """Called once at construction (e.g. to read the tokenizer, or to place a model on the device)."""

    def prepare_train_dataset(self, dataset, context: FieldContext):
        """The training data with whatever this provider precomputes once (default: unchanged); called once, after
        every provider is bound."""
        return dataset

    def collate(self, examples: Sequence[Mapping[str, Any]], kwise: bool, num_responses: int) -> dict[str, torch.Tensor]:
        """Entries added to every collated batch; keys start with ``field_`` (never passed to the model)."""
        return {}

    def provide(self, context: FieldContext, inputs: Mapping[str, Any], response_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The values of ``fields`` for this batch, shaped as `LogProbs` documents."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.fields)}: {self.source})"


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ColumnField(FieldProvider):
    """A per-response field read from dataset columns: ``(chosen, rejected)`` for pairs, one list column for K-wise."""

    def __init__(self, field: str, pair: tuple[str, str], kwise: str):
        self.fields, self.pair, self.kwise = (field,), tuple(pair), kwise
        self.source = f"columns {self.pair[0]!r}/{self.pair[1]!r} (pairs) or {kwise!r} (K-wise, best first)"

    def columns(self) -> tuple[str, ...]:
        return (*self.pair, self.kwise)

    def check(self, example, kwise, losses):
        columns = (self.kwise,) if kwise else self.pair
        missing = [column for column in columns if column not in example]
        if missing:
            raise ValueError(
                f"loss {list(losses)} needs LogProbs.{self.fields[0]}, read from dataset column(s) {list(columns)}; "
                f"the dataset lacks {missing}"
            )
        for column in columns:  # present in the schema, but this row may hold no (or a non-finite) value
            values = example[column] if kwise else [example[column]]
            if values is None or any(not _is_finite_number(value) for value in values):
                raise ValueError(
                    f"loss {list(losses)} needs LogProbs.{self.fields[0]}, read from column {column!r}, which holds "
                    f"{example[column]!r} in this row (finite numbers needed)"
                )

    def collate(self, examples, kwise, num_responses):
        if kwise:
            if examples[0].get(self.kwise) is None:
                return {}
            values = torch.zeros(len(examples), num_responses)
            for b, example in enumerate(examples):
                values[b, : len(example[self.kwise])] = torch.tensor(example[self.kwise], dtype=torch.float32)
            return {f"field_{self.fields[0]}": values}
        chosen, rejected = self.pair
        if chosen not in examples[0] or rejected not in examples[0]:
            return {}
        values = [[float(example[chosen]), float(example[rejected])] for example in examples]
        return {f"field_{self.fields[0]}": torch.tensor(values, dtype=torch.float32)}

    def provide(self, context, inputs, response_index):
        key = f"field_{self.fields[0]}"
        if key not in inputs:
            raise ValueError(
                f"the batch has no {key!r}: LogProbs.{self.fields[0]} comes from columns {list(self.columns())}, "
                "which a custom data_collator must pass through"
            )
        return {self.fields[0]: inputs[key]}


class ReferenceField(ColumnField):
    """``reference``: precomputed columns when present, else a forward under the trainer's reference
    (``ref_model``, the adapter-disabled PEFT base, or the copy of the initial model)."""

    def __init__(self):
        super().__init__("reference", REFERENCE_COLUMNS["pair"], REFERENCE_COLUMNS["kwise"])
        self.source = "`ref_model`, the adapter-disabled PEFT base, the initial-model copy, or precomputed columns"

    def check(self, example, kwise, losses):
        pass  # the trainer always has a reference to run

    def provide(self, context, inputs, response_index):
        if "field_reference" in inputs:
            return {"reference": inputs["field_reference"]}
        if "ref_chosen_logps" in inputs:  # a TRL collator passing precomputed columns through
            return {"reference": torch.stack([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]], 1)}
        return {"reference": as_matrix(context.reference_logps(inputs, response_index), response_index)}


class ModelField(FieldProvider):
    """A per-response field computed by a forward pass of every response under another model (no gradient).

    E.g. INPO's ``previous`` = log pi_t(y|x) under the round's starting policy: ``ModelField("previous", pi_t)``.
    The model is frozen and moved to the trainer's device when the trainer is built."""

    def __init__(self, field: str, model, *, description: str | None = None):
        self.fields, self.model = (field,), model
        self.source = description or f"a forward pass under {type(model).__name__}"

    def bind(self, context):
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.to(context.device)

    def provide(self, context, inputs, response_index):
        return {self.fields[0]: as_matrix(context.model_logps(self.model, inputs, response_index), response_index)}


class SampleField(FieldProvider):
    """A per-example pair of fields scored on one extra response per prompt, read from a dataset column:
    ``policy_field`` under the policy (with gradient) and ``reference_field`` under the reference.

    VPO's online mode: ``SampleField("calibration_policy", "calibration_reference", column="calibration")``
    with a column holding one y_cal ~ pi_cal per prompt (text, or an assistant message list for
    conversational rows)."""

    def __init__(self, policy_field: str, reference_field: str, *, column: str):
        self.fields, self.column = (policy_field, reference_field), column
        self.source = f"one sample per prompt in column {column!r}, scored under the policy and the reference"
        self.tokenizer = None

    def columns(self):
        return (self.column, "prompt")

    def check(self, example, kwise, losses):
        if self.column not in example:
            raise ValueError(
                f"loss {list(losses)} needs LogProbs.{self.fields[0]}/{self.fields[1]}, scored on a sample per prompt "
                f"read from dataset column {self.column!r}; the dataset lacks it"
            )
        if "prompt" not in example:
            raise ValueError(f"SampleField needs the untokenised 'prompt' column next to {self.column!r}")

    def bind(self, context):
        self.tokenizer, self.max_length = context.tokenizer, context.max_length

    def collate(self, examples, kwise, num_responses):
        sequences = []
        for example in examples:
            prompt_ids, (completion_ids,) = encode(
                self.tokenizer, example["prompt"], [example[self.column]], eos_token=self.tokenizer.eos_token
            )
            sequences.append((prompt_ids, completion_ids))
        padded = pad_sequences(sequences, self.tokenizer.pad_token_id, max_length=self.max_length)
        padded["response_index"] = one_row_per_example(len(examples))  # each sample is its own example
        return {f"field_{self.column}/{key}": value for key, value in padded.items()}

    def sample_batch(self, inputs) -> dict[str, torch.Tensor]:
        """The batch of this provider's samples (one row per example), as collated."""
        return sub_batch(inputs, f"field_{self.column}/")

    def provide(self, context, inputs, response_index):
        batch = self.sample_batch(inputs)
        return {self.fields[0]: context.policy_logps(batch), self.fields[1]: context.reference_logps(batch)}


class Unavailable(FieldProvider):
    """Fields no offline preference dataset can hold: asking for them raises with ``reason``."""

    def __init__(self, fields: Iterable[str], reason: str):
        self.fields, self.source = tuple(fields), reason

    def check(self, example, kwise, losses):
        field = next(name for name in self.fields)
        raise ValueError(
            f"loss {list(losses)} needs LogProbs.{'/'.join(self.fields)}: {self.source}. No field provider fills "
            f"{field} from a preference dataset; pass one with Trainer(..., field_providers=[...]) "
            "(see prefopt.training.fields) or train this loss online (README, 'Losses that need online data')."
        )

    def provide(self, context, inputs, response_index):  # pragma: no cover - check() refuses first
        raise RuntimeError(f"no provider for {self.fields}")


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
                "with prefopt.methods.bvpo.annotate_views, or, with trace pairs only, pass field_providers="
                "[EmptyTraceField(from_trace_pairs=True)] (an approximation: the traced answers behind an empty block)"
            )
        if self.thinking.template_switch and not is_conversational(example["prompt"]):
            raise ValueError(
                f"Thinking(template_switch={self.thinking.template_switch!r}) renders the empty block with the chat "
                "template, which needs conversational rows; plain-text rows use the thinking tags"
            )

    def bind(self, context: FieldContext) -> None:
        self.tokenizer, self.max_length = context.tokenizer, context.max_length
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
        size = len(examples)  # chosen rows first, then rejected rows: example b's pair is rows b and b + size
        padded["response_index"] = torch.stack([torch.arange(size), torch.arange(size) + size], 1)
        return {f"field_empty/{key}": value for key, value in padded.items()}

    def provide(self, context, inputs, response_index):
        batch = sub_batch(inputs, "field_empty/")
        if not batch:
            raise ValueError("the batch has no 'field_empty/...' entries: a custom data_collator must call EmptyTraceField.collate")
        layout = batch["response_index"]
        return {"empty_policy": as_matrix(context.policy_logps(batch), layout),
                "empty_reference": as_matrix(context.reference_logps(batch), layout)}


# ------------------------------------------------------------------------------- the round loop's fields


@contextlib.contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """``model`` in eval mode (no dropout) and no gradient for the block; its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class RoundStartLogps(FieldProvider):
    """Fields precomputed once, when the round's trainer is built, for every row of its training data.

    ``scorers`` maps a `LogProbs` field to ``fn(context, batch) -> Tensor``: [N] (one value per response row of
    the collated batch; stored [B, K]) or, for per-example fields (``per_example``), [B]. The round loop uses it
    for ``reference`` (pi_ref), ``previous`` (the policy as it is before the round's first step, i.e. pi_t) and
    ``calibration_reference``, as INPO's authors precompute reference and pi_t log-probs. The values are
    added to the trainer's training data as ``round_<field>`` columns and collated like any column."""

    def __init__(self, scorers: dict[str, Callable[[FieldContext, dict], torch.Tensor]], per_example: Sequence[str] = (),
                 batch_size: int = 8):
        self.fields, self.scorers = tuple(scorers), scorers
        self.per_example, self.batch_size = set(per_example), batch_size
        self.source = "precomputed at the round's start: " + ", ".join(self.fields)

    def columns(self):
        return tuple(f"round_{name}" for name in self.fields)

    def prepare_train_dataset(self, dataset, context):
        if not isinstance(dataset, Dataset):
            raise ValueError("RoundStartLogps needs a map-style training Dataset")
        loader = DataLoader(dataset, batch_size=self.batch_size, collate_fn=context.collator, shuffle=False)
        values: dict[str, list[list[float]]] = {name: [] for name in self.fields}
        with evaluation_mode(context.policy):
            for batch in loader:
                batch = {k: v.to(context.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                real = batch["response_index"] >= 0
                for name, scorer in self.scorers.items():
                    result = scorer(context, batch).float()
                    if name in self.per_example:
                        values[name] += [[value] for value in result.cpu().tolist()]
                    else:
                        matrix = as_matrix(result, batch["response_index"]).cpu()
                        values[name] += [row[mask].tolist() for row, mask in zip(matrix, real.cpu())]
        for name in self.fields:
            column = f"round_{name}"
            if column in dataset.column_names:
                dataset = dataset.remove_columns(column)
            dataset = dataset.add_column(column, values[name])
        return dataset

    def collate(self, examples, kwise, num_responses):
        output = {}
        for name in self.fields:
            column = f"round_{name}"
            if column not in examples[0]:
                continue  # while prepare_train_dataset() computes the values
            if name in self.per_example:
                output[f"field_{name}"] = torch.tensor([example[column][0] for example in examples], dtype=torch.float32)
            else:
                matrix = torch.zeros(len(examples), num_responses)
                for b, example in enumerate(examples):
                    matrix[b, : len(example[column])] = torch.tensor(example[column], dtype=torch.float32)
                output[f"field_{name}"] = matrix
        return output

    def provide(self, context, inputs, response_index):
        missing = [name for name in self.fields if f"field_{name}" not in inputs]
        if missing:
            raise ValueError(f"the batch has no precomputed {missing}: a custom data_collator must pass columns {list(self.columns())} through")
        return {name: inputs[f"field_{name}"] for name in self.fields}


class CalibrationPolicyField(SampleField):
    """``calibration_policy``: log pi_theta(y_cal|x) of the row's calibration sample, under the policy with
    gradient at every step (its ``calibration_reference`` is precomputed by `RoundStartLogps`)."""

    def __init__(self, column: str = "calibration"):
        super().__init__("calibration_policy", "calibration_reference", column=column)
        self.fields = ("calibration_policy",)
        self.source = f"one sample per prompt in column {column!r}, scored under the policy at every step"

    def provide(self, context, inputs, response_index):
        return {"calibration_policy": context.policy_logps(self.sample_batch(inputs))}


# ------------------------------------------------------------------------------------------ defaults


def default_providers() -> list[FieldProvider]:
    """The providers every `prefopt.Trainer` starts from (one per field the step does not compute)."""
    return [
        ReferenceField(),
        ColumnField("scores", ("score_chosen", "score_rejected"), "scores"),
        ColumnField("previous", ("previous_chosen_logps", "previous_rejected_logps"), "previous_logps"),
        Unavailable(
            ("calibration_policy", "calibration_reference"),
            "log-probs of responses sampled from a calibration policy (online VPO; "
            "SampleField reads them from a column of samples)",
        ),
        EmptyTraceField(),
        Unavailable(("proposal", "target"), "log-probs of on-policy samples under their proposal and target (f-DPG)"),
    ]


class FieldSet:
    """The field providers of one run, and the one place a batch's `LogProbs` fields are put together.

    ``by_field`` maps each field to its provider (the defaults, replaced by ``given``); ``batch_providers`` run
    every batch (the given ones in the order given, then the defaults of the fields the loss needs);
    ``row_providers`` check every row. `collect` turns a batch and its policy forward into the fields the loss
    takes: ``policy``, ``lengths`` (and ``mask`` for K-wise data, WPO's ``weights`` with ``use_weighting``) from
    the forward, every other field from its provider."""

    def __init__(self, required_fields: Sequence[str], given: Iterable[FieldProvider] | None = None, *,
                 kwise: bool = False, use_weighting: bool = False):
        self.given = list(given or ())
        self.by_field = resolve_providers(self.given)
        self.required_fields, self.kwise, self.use_weighting = tuple(required_fields), kwise, use_weighting

    @property
    def batch_providers(self) -> list[FieldProvider]:
        needed = [self.by_field[f] for f in self.required_fields if f in self.by_field]
        return _unique([*self.given, *needed])

    @property
    def row_providers(self) -> list[FieldProvider]:
        needed = [self.by_field[f] for f in self.required_fields if f not in STEP_FIELDS]
        return _unique([*needed, *self.given])

    def columns(self) -> list[str]:
        """Every dataset column some provider reads (the trainer keeps them through TRL's column filter)."""
        return [column for provider in self.by_field.values() for column in provider.columns()]

    def bind(self, context: FieldContext, train_dataset):
        """Bind every batch provider, then let each precompute what it needs; returns the training data."""
        for provider in self.batch_providers:
            provider.bind(context)
        for provider in self.batch_providers:  # after every bind: a precomputation collates every provider's entries
            train_dataset = provider.prepare_train_dataset(train_dataset, context)
        return train_dataset

    def collect(self, context: FieldContext, inputs: Mapping[str, Any], response_index: torch.Tensor,
                policy: SequenceLogProbs) -> dict[str, torch.Tensor]:
        """The batch's `LogProbs` fields, in the policy's dtype."""
        dtype = policy.logps.dtype
        fields = {"policy": as_matrix(policy.logps, response_index), "lengths": as_matrix(policy.lengths, response_index)}
        if self.kwise:
            fields["mask"] = response_index >= 0
        for provider in self.batch_providers:
            provided = provider.provide(context, inputs, response_index)
            fields.update((name, value.to(dtype)) for name, value in provided.items())
        if self.use_weighting:
            fields["weights"] = _example_weights(policy.outputs, inputs, response_index).to(dtype)
        return fields


def _unique(providers: Iterable[FieldProvider]) -> list[FieldProvider]:
    return list({id(provider): provider for provider in providers}.values())


def _example_weights(outputs, inputs, response_index) -> torch.Tensor:
    """WPO weights [B, K] of the responses (`use_weighting`), from the policy forward's fused-head outputs."""
    shifted_mask = inputs["completion_mask"][..., 1:]
    seq_len = shifted_mask.size(1)
    weights = wpo_weights(outputs.log_probs[:, -seq_len:], outputs.log_sum_sq_probs[:, -seq_len:], shifted_mask)
    return as_matrix(weights, response_index).masked_fill(response_index < 0, 1.0)


def resolve_providers(extra: Iterable[FieldProvider] | None = None) -> dict[str, FieldProvider]:
    """Field name -> provider: the defaults, replaced field by field by ``extra``."""
    providers: dict[str, FieldProvider] = {}
    for provider in [*default_providers(), *(extra or ())]:
        if not isinstance(provider, FieldProvider):
            raise TypeError(f"field providers must be prefopt.training.fields.FieldProvider objects, got {type(provider).__name__}")
        for field in provider.fields:
            if field not in LOGPROBS_FIELDS or field in STEP_FIELDS:
                raise ValueError(
                    f"{provider!r} fills {field!r}, which is not a LogProbs field a provider may fill; "
                    f"fields: {[f for f in LOGPROBS_FIELDS if f not in STEP_FIELDS]}"
                )
            providers[field] = provider
    return providers


def servable_fields(example: Mapping[str, Any], providers: Mapping[str, FieldProvider] | None = None) -> set[str]:
    """The `LogProbs` fields the trainer can fill for data whose rows look like ``example``."""
    providers = resolve_providers() if providers is None else providers
    kwise = is_kwise_example(example)
    servable = set(STEP_FIELDS)
    for field, provider in providers.items():
        with contextlib.suppress(ValueError):
            provider.check(example, kwise, ())
            servable.add(field)
    return servable
