"""Tokenisation and collation of K-wise data, and the columns that feed optional `LogProbs` fields.

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
from trl.data_utils import _tokenize, common_prefix_length, is_conversational
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

# LogProbs field -> dataset column(s) holding its values: (chosen, rejected) for pairs, one list column for K-wise.
FIELD_COLUMNS = {
    "scores": {"pair": ("score_chosen", "score_rejected"), "kwise": "scores"},
    "previous": {"pair": ("previous_chosen_logps", "previous_rejected_logps"), "kwise": "previous_logps"},
}
REFERENCE_COLUMNS = {"pair": ("ref_chosen_logps", "ref_rejected_logps"), "kwise": "ref_logps"}
# Fields the offline trainer cannot compute from a preference dataset, and why.
OFFLINE_UNAVAILABLE = {
    "calibration_policy": "log-probs of responses sampled from a calibration policy (online VPO)",
    "calibration_reference": "log-probs of responses sampled from a calibration policy (online VPO)",
    "empty_policy": "a second forward of every response with an empty reasoning trace (BVPO's empty-trace view)",
    "empty_reference": "a second forward of every response with an empty reasoning trace (BVPO's empty-trace view)",
    "proposal": "log-probs of on-policy samples under their proposal distribution (f-DPG is on-policy)",
    "target": "log-probs of on-policy samples under the target distribution (f-DPG is on-policy)",
}


def is_kwise_example(example: dict[str, Any]) -> bool:
    return "completions" in example or "completions_ids" in example


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
    completions = example["completions"]
    if is_conversational(example):
        prompt_ids = _tokenize(processing_class, example["prompt"], add_generation_prompt=True)["input_ids"]
        full_ids = [_tokenize(processing_class, example["prompt"] + completion)["input_ids"] for completion in completions]
    else:
        if eos_token:
            completions = [c if c.endswith(eos_token) else c + eos_token for c in completions]
        prompt_ids = _tokenize(processing_class, example["prompt"])["input_ids"]
        full_ids = [_tokenize(processing_class, example["prompt"] + completion)["input_ids"] for completion in completions]
    prompt_length = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    output = {
        "prompt_ids": prompt_ids[:prompt_length],
        "completions_ids": [ids[prompt_length:] for ids in full_ids],
        "completions": example["completions"],  # best first, as the ids
    }
    for column in ("ranking", "scores"):  # reordered with the completions
        if column in example:
            output[column] = example[column]
    return output


@dataclass
class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, extended to K-wise rows and to the columns that feed `LogProbs` fields.

    Adds ``response_index [B, K]`` (row of each response, -1 for padding) and, when present, the
    per-response columns of `FIELD_COLUMNS` / `REFERENCE_COLUMNS` as ``field_<name> [B, K]``.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "completions_ids" not in examples[0]:
            output = super().torch_call(examples)
            batch_size = len(examples)
            output["response_index"] = torch.stack([torch.arange(batch_size), torch.arange(batch_size) + batch_size], 1)
            for field, columns in {**FIELD_COLUMNS, "reference": {"pair": REFERENCE_COLUMNS["pair"]}}.items():
                chosen, rejected = columns["pair"]
                if chosen in examples[0] and rejected in examples[0]:
                    output[f"field_{field}"] = torch.tensor(
                        [[float(e[chosen]), float(e[rejected])] for e in examples], dtype=torch.float32
                    )
            output.pop("ref_chosen_logps", None)
            output.pop("ref_rejected_logps", None)
            return output
        return self._kwise_call(examples)

    def _kwise_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        sequences, completion_masks = [], []
        num_responses = max(len(example["completions_ids"]) for example in examples)
        response_index = torch.full((len(examples), num_responses), -1, dtype=torch.long)
        for b, example in enumerate(examples):
            for k, completion_ids in enumerate(example["completions_ids"]):
                response_index[b, k] = len(sequences)
                sequences.append(example["prompt_ids"] + completion_ids)
                completion_masks.append([0] * len(example["prompt_ids"]) + [1] * len(completion_ids))
        if self.max_length is not None:
            window = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            sequences = [ids[window] for ids in sequences]
            completion_masks = [mask[window] for mask in completion_masks]
        output = {
            "input_ids": pad([torch.tensor(ids) for ids in sequences], self.pad_token_id, "right", self.pad_to_multiple_of),
            "attention_mask": pad(
                [torch.ones(len(ids), dtype=torch.long) for ids in sequences], 0, "right", self.pad_to_multiple_of
            ),
            "completion_mask": pad(
                [torch.tensor(mask, dtype=torch.long) for mask in completion_masks], 0, "right", self.pad_to_multiple_of
            ),
            "response_index": response_index,
        }
        for field, columns in {**FIELD_COLUMNS, "reference": {"kwise": REFERENCE_COLUMNS["kwise"]}}.items():
            column = columns["kwise"]
            if examples[0].get(column) is not None:
                values = torch.zeros(len(examples), num_responses)
                for b, example in enumerate(examples):
                    values[b, : len(example[column])] = torch.tensor(example[column], dtype=torch.float32)
                output[f"field_{field}"] = values
        return output
