"""Tokenisation and collation of K-wise data; field providers (`prefopt.training.fields`) add their batch entries.

Pairwise rows are prepared by TRL (``prompt_ids``, ``chosen_ids``, ``rejected_ids``). K-wise rows
(``prompt``, ``completions`` best first, optionally ``ranking``) become ``prompt_ids`` and
``completions_ids`` (one token list per completion, best first). The collator lays every batch out
as sequences ``[N, L]`` plus ``response_index [B, K]``: the row of response k of example b, or -1
where example b has fewer than K responses. For pairs N = 2B with chosen rows first, as TRL's collator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefopt.logprobs import encode, pad_sequences
from prefopt.training.rows import is_kwise_example


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
