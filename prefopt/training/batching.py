"""Batching: tokenising the rows, counting what truncation does, and collating batches.

`PreferencePreparation` prepares a dataset for the trainer: pairwise rows are tokenised by TRL
(``prompt_ids``, ``chosen_ids``, ``rejected_ids``), K-wise rows (``prompt``, ``completions`` best first,
optionally ``ranking``) by `tokenize_kwise` (``prompt_ids`` and ``completions_ids``, best first); then the
rows TRL's preparation filters out are counted and reported (it drops them silently), every row ``max_length``
cuts is counted per reason (`truncation_reasons`), and rows whose responses truncation makes identical are
dropped (they state no preference). `PromptPreparation` is the same for a trainer whose rows are prompts.

`PreferenceCollator` lays every batch out as sequences ``[N, L]`` plus ``response_index [B, K]``: the row
of response k of example b, or -1 where example b has fewer than K responses. For pairs N = 2B with chosen
rows first, as TRL's collator. Field providers (`prefopt.training.fields`) add their batch entries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from datasets import Dataset, IterableDataset
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefopt.logprobs import encode, pad_sequences
from prefopt.training.rows import first_row, is_kwise_example

logger = logging.getLogger(__name__)

TRUNCATION_REASONS = ("prompt cut", "response cut", "responses identical after truncation")
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "completions_ids")


def order_completions(example: dict[str, Any]) -> dict[str, Any]:
    """Reorder ``completions`` (and ``scores``) by ``ranking``: completion indices listed best first."""
    ranking = example.get("ranking")
    if ranking is None:
        return example
    completions = example["completions"]
    if sorted(ranking) != list(range(len(completions))):
        raise ValueError(
            f"ranking {ranking} is not a permutation of the {len(completions)} completion indices; "
            "give the completion indices best first, e.g. [2, 0, 1]"
        )
    example = dict(example)
    example["completions"] = [completions[index] for index in ranking]
    if example.get("scores") is not None:
        example["scores"] = [example["scores"][index] for index in ranking]
    example["ranking"] = list(range(len(completions)))
    return example


def tokenize_kwise(example: dict[str, Any], processing_class, eos_token: str | None) -> dict[str, Any]:
    """Token ids of the prompt and of each completion, split where prompt and prompt+completion diverge (as TRL)."""
    example = order_completions(example)
    prompt_ids, completions_ids = encode(processing_class, example["prompt"], example["completions"], eos_token=eos_token)
    output = {
        "prompt_ids": prompt_ids,
        "completions_ids": completions_ids,
        "completions": example["completions"],  # best first, as the ids
    }
    for column in ("ranking", "scores"):  # reordered with the completions
        if column in example:
            output[column] = example[column]
    return output


@dataclass
class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, extended to K-wise rows and to the entries of field providers.

    Adds ``response_index [B, K]`` (row of each response, -1 for padding) and what each of
    ``providers`` (`prefopt.training.fields.FieldProvider`) collates, e.g. ``field_scores [B, K]``.
    """

    providers: tuple = ()

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kwise = is_kwise_example(examples[0])
        if kwise:
            output = self._kwise_call(examples)
        else:
            output = super().torch_call(examples)
            batch_size = len(examples)
            output["response_index"] = torch.stack([torch.arange(batch_size), torch.arange(batch_size) + batch_size], 1)
        for provider in self.providers:
            output.update(provider.collate(examples, kwise, output["response_index"].size(1)))
        if "field_reference" in output:  # TRL's own columns, now a field
            output.pop("ref_chosen_logps", None)
            output.pop("ref_rejected_logps", None)
        return output

    def _kwise_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        sequences = []
        num_responses = max(len(example["completions_ids"]) for example in examples)
        response_index = torch.full((len(examples), num_responses), -1, dtype=torch.long)
        for b, example in enumerate(examples):
            for k, completion_ids in enumerate(example["completions_ids"]):
                response_index[b, k] = len(sequences)
                sequences.append((example["prompt_ids"], completion_ids))
        output = pad_sequences(
            sequences,
            self.pad_token_id,
            max_length=self.max_length,
            truncation_mode=self.truncation_mode,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        output["response_index"] = response_index
        return output


# ------------------------------------------------------------------------------------------ preparing


def truncation_reasons(example: Mapping[str, Any], max_length: int | None, truncation_mode: str = "keep_start") -> set[str]:
    """What ``max_length`` cuts in one tokenised row (pairs or K-wise), as the collator truncates it.

    "prompt cut": ``keep_end`` drops the start of the prompt; "response cut": tokens of a response are lost;
    "responses identical after truncation": two responses of the row become the same token sequence, so the
    row no longer states a preference (the trainer drops such rows).
    """
    if max_length is None:
        return set()
    if is_kwise_example(example):
        responses = list(example["completions_ids"])
    else:
        responses = [example["chosen_ids"], example["rejected_ids"]]
    prompt = list(example["prompt_ids"])
    reasons, kept = set(), []
    for response in responses:
        sequence = prompt + list(response)
        excess = len(sequence) - max_length
        if excess > 0:
            if truncation_mode == "keep_end":
                reasons.add("prompt cut")
                if excess > len(prompt):
                    reasons.add("response cut")
                sequence = sequence[excess:]
            else:
                reasons.add("response cut")
                sequence = sequence[:max_length]
        kept.append(tuple(sequence))
    if len(set(kept)) < len(kept) and len({tuple(response) for response in responses}) == len(responses):
        reasons.add("responses identical after truncation")
    return reasons


class PreferencePreparation:
    """Prepares preference datasets (module docstring). ``dropped_rows[name]`` counts the rows TRL's preparation
    filtered out, ``truncated_rows[name][reason]`` the rows ``max_length`` cuts (live while rows stream)."""

    def __init__(self, fields=None):
        self.fields = fields
        self.dropped_rows: dict[str, int] = {}
        self.truncated_rows: dict[str, dict[str, int]] = {}

    def prepare(self, dataset, name: str, args, *, tokenize_pairs: Callable, processing_class, eos_token: str | None):
        """Tokenise ``dataset`` (``tokenize_pairs`` is TRL's preparation of pairwise rows), then count and report
        what was dropped or truncated."""
        rows_before = len(dataset) if isinstance(dataset, Dataset) else None
        prepared = self._tokenize(dataset, name, args, tokenize_pairs, processing_class, eos_token)
        if rows_before is not None:
            dropped = rows_before - len(prepared)
            self.dropped_rows[name] = dropped
            if rows_before and not len(prepared):
                raise ValueError(
                    f"{name} dataset: all {rows_before} rows were dropped because the prompt alone fills "
                    f"max_length={args.max_length} tokens; raise max_length or shorten the prompts"
                )
            if dropped:
                logger.warning(
                    "%s dataset: dropped %d of %d rows whose prompt alone fills max_length=%s tokens "
                    "(raise max_length or shorten those prompts to keep them)",
                    name, dropped, rows_before, args.max_length,
                )
        return self._report_truncation(prepared, name, args)

    @staticmethod
    def _tokenize(dataset, name, args, tokenize_pairs, processing_class, eos_token):
        example = first_row(dataset, name)
        if "prompt_ids" in example and ("chosen_ids" in example or "completions_ids" in example):
            return dataset  # already tokenised
        if not is_kwise_example(example):
            return tokenize_pairs(dataset)
        map_kwargs = {"num_proc": args.dataset_num_proc} if isinstance(dataset, Dataset) else {}
        dataset = dataset.map(tokenize_kwise, fn_kwargs={"processing_class": processing_class, "eos_token": eos_token},
                              **map_kwargs)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length, **map_kwargs)
        return dataset

    def _report_truncation(self, dataset, name: str, args):
        """Count the rows ``max_length`` cuts, per reason, and drop those whose responses truncation makes
        identical. Map-style: counted and logged now; iterable: counted as rows stream."""
        counts = self.truncated_rows.setdefault(name, dict.fromkeys(TRUNCATION_REASONS, 0))
        if args.max_length is None:
            return dataset
        identical = "responses identical after truncation"

        def keep(example) -> bool:
            reasons = truncation_reasons(example, args.max_length, args.truncation_mode)
            for reason in reasons:
                counts[reason] += 1
            return identical not in reasons

        if isinstance(dataset, IterableDataset):
            return dataset.filter(keep)
        columns = [column for column in TOKEN_COLUMNS if column in dataset.column_names]
        kept = [index for index, example in enumerate(dataset.select_columns(columns)) if keep(example)]
        if any(counts.values()):
            logger.warning(
                "%s dataset: max_length=%s (truncation_mode=%s) cuts %s; rows whose responses become identical are "
                "dropped (they state no preference)",
                name, args.max_length, args.truncation_mode,
                ", ".join(f"{count} rows: {reason}" for reason, count in counts.items() if count),
            )
        if len(kept) < len(dataset):
            dataset = dataset.select(kept)
            if not len(dataset):
                raise ValueError(f"{name} dataset: every row's responses are identical after truncation to "
                                 f"max_length={args.max_length}; raise max_length")
        return dataset

    def signature_columns(self, trl_columns) -> list[str]:
        """The columns the trainer keeps: TRL's, the K-wise ids, and every column a field provider reads."""
        provided = self.fields.columns() if self.fields is not None else []
        return list(dict.fromkeys([*trl_columns, "completions_ids", *provided]))

    def collator(self, args, tokenizer, providers) -> PreferenceCollator:
        return PreferenceCollator(pad_token_id=tokenizer.pad_token_id, max_length=args.max_length,
                                  truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
                                  providers=providers)


class PromptCollator:
    """Collator of a prompt dataset: the batch is the list of prompts (the trainer samples in its step)."""

    def __call__(self, rows):
        return {"prompt": [row["prompt"] for row in rows]}


class PromptPreparation:
    """Datasets of prompts (on-policy training): nothing to tokenise, drop or truncate; the ``prompt`` column."""

    def __init__(self, fields=None):
        self.dropped_rows: dict[str, int] = {}
        self.truncated_rows: dict[str, dict[str, int]] = {}

    def prepare(self, dataset, name: str, args, **_):
        self.dropped_rows[name] = 0  # prompts need no tokenising; every row was checked at construction
        return dataset

    def signature_columns(self, trl_columns) -> list[str]:
        return ["prompt"]

    def collator(self, args, tokenizer, providers) -> PromptCollator:
        return PromptCollator()
