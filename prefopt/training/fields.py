"""Field providers: which `LogProbs` fields `prefopt.Trainer` can fill, and from where.

The trainer's own step computes ``policy``, ``lengths`` and ``mask`` (the policy forward); every other
field comes from a provider. A provider says which field(s) it fills and from where, checks at
construction that it can (raising with the field and the column to add), may add entries to each
collated batch (``collate``), and fills its fields at every step (``provide``). A method plugs in
the providers it needs without editing the trainer:

    from prefopt.training.fields import ModelField
    Trainer(model, args=PrefOptConfig("out", loss="inpo"), train_dataset=pairs, processing_class=tokenizer,
            field_providers=[ModelField("previous", previous_policy)])   # pi_t log-probs by a forward pass

Providers given to the trainer replace the default provider of the same field. The defaults
(`default_providers`) read dataset columns (``scores``, ``previous``), run the reference (``reference``),
and, for fields no offline dataset can hold, raise with the reason (`Unavailable`).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch

from prefopt.logprobs import as_matrix, encode, pad_sequences, sequence_logps
from prefopt.training.reference import REFERENCE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from prefopt.training.trainer import Trainer

# Fields the training step computes itself from the policy forward, for every loss.
STEP_FIELDS = {
    "policy": "the policy forward (sum of response-token log-probs)",
    "lengths": "the policy forward's response token counts",
    "mask": "the collator (K-wise rows with fewer responses than the batch's K)",
    "weights": "the policy forward's fused-head outputs, when `use_weighting` is set (WPO weights)",
}
class FieldProvider:
    """Base class: fills ``fields`` (LogProbs field names); ``source`` says from where (docs, errors)."""

    fields: tuple[str, ...] = ()
    source: str = ""

    def columns(self) -> tuple[str, ...]:
        """Dataset columns the trainer must keep for this provider (TRL drops unknown columns)."""
        return ()

    def check(self, example: Mapping[str, Any], kwise: bool, losses: Sequence[str]) -> None:
        """Raise a ValueError naming the field and what to add when this provider cannot serve the data."""

    def bind(self, trainer: "Trainer") -> None:
        """Called once at construction (e.g. to read the tokenizer, or to place a model on the device)."""

    def collate(self, examples: Sequence[Mapping[str, Any]], kwise: bool, num_responses: int) -> dict[str, torch.Tensor]:
        """Entries added to every collated batch; keys start with ``field_`` (never passed to the model)."""
        return {}

    def provide(self, trainer: "Trainer", inputs: Mapping[str, Any], response_index: torch.Tensor) -> dict[str, torch.Tensor]:
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

    def provide(self, trainer, inputs, response_index):
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

    def provide(self, trainer, inputs, response_index):
        if "field_reference" in inputs:
            return {"reference": inputs["field_reference"]}
        if "ref_chosen_logps" in inputs:  # a TRL collator passing precomputed columns through
            return {"reference": torch.stack([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]], 1)}
        return {"reference": as_matrix(trainer.reference_logps(inputs), response_index)}


class ModelField(FieldProvider):
    """A per-response field computed by a forward pass of every response under another model (no gradient).

    E.g. INPO's ``previous`` = log pi_t(y|x) under the round's starting policy: ``ModelField("previous", pi_t)``.
    The model is frozen and moved to the trainer's device when the trainer is built."""

    def __init__(self, field: str, model, *, description: str | None = None):
        self.fields, self.model = (field,), model
        self.source = description or f"a forward pass under {type(model).__name__}"

    def bind(self, trainer):
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.to(trainer.accelerator.device)

    def provide(self, trainer, inputs, response_index):
        with torch.no_grad(), trainer.accelerator.autocast():
            logps = sequence_logps(self.model, inputs).logps
        return {self.fields[0]: as_matrix(logps, response_index)}


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

    def bind(self, trainer):
        self.tokenizer = trainer._tokenizer
        self.max_length = trainer.args.max_length

    def collate(self, examples, kwise, num_responses):
        sequences = []
        for example in examples:
            prompt_ids, (completion_ids,) = encode(
                self.tokenizer, example["prompt"], [example[self.column]], eos_token=self.tokenizer.eos_token
            )
            sequences.append((prompt_ids, completion_ids))
        padded = pad_sequences(sequences, self.tokenizer.pad_token_id, max_length=self.max_length)
        return {f"field_{self.column}/{key}": value for key, value in padded.items()}

    def provide(self, trainer, inputs, response_index):
        prefix = f"field_{self.column}/"
        batch = {key[len(prefix) :]: value for key, value in inputs.items() if key.startswith(prefix)}
        policy = sequence_logps(trainer.model, batch, fused_lm_head=True).logps
        return {self.fields[0]: policy, self.fields[1]: trainer.reference_logps(batch)}


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

    def provide(self, trainer, inputs, response_index):  # pragma: no cover - check() refuses first
        raise RuntimeError(f"no provider for {self.fields}")


def default_providers() -> list[FieldProvider]:
    """The providers every `prefopt.Trainer` starts from (one per field the step does not compute)."""
    from prefopt.methods.bvpo.reasoning import EmptyTraceField  # BVPO's empty-trace view (columns chosen_no_trace/rejected_no_trace)

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


def resolve_providers(extra: Iterable[FieldProvider] | None = None) -> dict[str, FieldProvider]:
    """Field name -> provider: the defaults, replaced field by field by ``extra``."""
    from prefopt.losses._batch import LOGPROBS_FIELDS

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
    kwise = "completions" in example or "completions_ids" in example
    servable = set(STEP_FIELDS)
    for field, provider in providers.items():
        with contextlib.suppress(ValueError):
            provider.check(example, kwise, ())
            servable.add(field)
    return servable
