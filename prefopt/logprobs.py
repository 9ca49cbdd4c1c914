"""The one sequence-log-prob routine: the Trainer, held-out evaluation and every scorer use it.

    from prefopt.logprobs import score
    result = score(model, tokenizer, prompts, responses)     # result.logps [N], result.lengths [N]

Three layers, each usable alone:

* `encode(tokenizer, prompt, completions)`: token ids of a prompt and of each completion, split where
  the prompt and prompt+completion diverge, exactly as TRL tokenises preference data (chat template
  for message lists, EOS appended to plain-text completions);
* `pad_sequences(...)`: right-padded ``input_ids`` / ``attention_mask`` / ``completion_mask`` [N, L];
* `token_logps(model, batch)`: per-token log-probs [N, L-1] of each next token, 0 outside the
  completion; `sequence_logps(model, batch)` sums them (and counts the completion tokens).

``fused_lm_head=True`` asks a model patched by TRL's ``add_fused_lm_head`` (as `prefopt.Trainer`
does) for per-token log-probs without materialising the logits; otherwise the logits are computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prefopt._progress import progress_bar
from prefopt.chat import is_conversational

# Keys of a collated batch that are not model inputs (prefixed `field_` keys are never model inputs either).
NON_MODEL_KEYS = ("completion_mask", "response_index", "ref_chosen_logps", "ref_rejected_logps")


@dataclass
class SequenceLogProbs:
    """Per-sequence sums of completion-token log-probs, completion lengths, and the model outputs."""

    logps: torch.Tensor  # [N]
    lengths: torch.Tensor  # [N]
    outputs: Any = None  # the forward's outputs (fused head: entropy, mean_logits, is_top1, aux_loss, ...)


# ------------------------------------------------------------------------------------------- encoding


def token_ids(tokenizer, value, **chat_options) -> list[int]:
    """Token ids of text, or of a message list through the chat template (TRL's tokenisation)."""
    from trl.data_utils import _tokenize

    return list(_tokenize(tokenizer, value, **chat_options)["input_ids"])


def encode(
    tokenizer, prompt, completions: Sequence, *, eos_token: str | None = None, chat_template_kwargs: dict | None = None
) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [completion_ids, ...])`` as TRL tokenises preference rows.

    ``prompt`` is text or a message list; each completion is text or an assistant message list (same kind
    as the prompt). Conversational rows go through the chat template (prompt with the generation prompt);
    plain-text completions get ``eos_token`` appended unless they end with it. The prompt ends where the
    prompt alone and every prompt+completion stop agreeing, so the completion tokens are those the model
    predicts after the prompt it sees. ``chat_template_kwargs`` are template variables for both renderings
    (e.g. ``{"enable_thinking": False}``).
    """
    from trl.data_utils import common_prefix_length

    if is_conversational(prompt):
        options = dict(chat_template_kwargs or {})
        prompt_ids = token_ids(tokenizer, prompt, add_generation_prompt=True, **options)
        full_ids = [token_ids(tokenizer, prompt + list(completion), **options) for completion in completions]
    else:
        if eos_token:
            completions = [c if c.endswith(eos_token) else c + eos_token for c in completions]
        prompt_ids = token_ids(tokenizer, prompt)
        full_ids = [token_ids(tokenizer, prompt + completion) for completion in completions]
    prompt_length = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    return prompt_ids[:prompt_length], [ids[prompt_length:] for ids in full_ids]


def pad_sequences(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    *,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` [N, L] of (prompt_ids, completion_ids)."""
    from trl.trainer.utils import pad

    ids = [list(prompt) + list(completion) for prompt, completion in sequences]
    masks = [[0] * len(prompt) + [1] * len(completion) for prompt, completion in sequences]
    if max_length is not None:
        window = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
        ids, masks = [row[window] for row in ids], [row[window] for row in masks]
    return {
        "input_ids": pad([torch.tensor(row) for row in ids], pad_token_id, "right", pad_to_multiple_of),
        "attention_mask": pad([torch.ones(len(row), dtype=torch.long) for row in ids], 0, "right", pad_to_multiple_of),
        "completion_mask": pad([torch.tensor(row, dtype=torch.long) for row in masks], 0, "right", pad_to_multiple_of),
    }


# ------------------------------------------------------------------------------------------ log-probs


def as_matrix(values: torch.Tensor, response_index: torch.Tensor) -> torch.Tensor:
    """Per-row values [N] -> [B, K] laid out by ``response_index`` (0 where a row has fewer responses)."""
    real = response_index >= 0
    return values[response_index.clamp(min=0)].masked_fill(~real, 0)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that the model's forward takes."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS and not k.startswith("field_")}


def token_logps(model, batch: dict[str, Any], *, fused_lm_head: bool = False, **model_kwargs) -> tuple[torch.Tensor, Any]:
    """Log-prob of every next token [N, L-1] (0 where the token is not a completion token) and the outputs."""
    inputs = model_inputs(batch)
    inputs.update(use_cache=False, **model_kwargs)
    completion_mask = batch["completion_mask"]
    width = completion_mask.size(1) - 1
    if fused_lm_head:
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**inputs, labels=labels, fused_lm_head=True)
        # prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        return outputs.log_probs[:, -width:], outputs
    outputs = model(**inputs)
    logits = outputs.logits[:, -(width + 1) : -1].float()
    targets = batch["input_ids"][:, 1:]
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return per_token * completion_mask[:, 1:].to(per_token.dtype), outputs


def sequence_logps(model, batch: dict[str, Any], *, fused_lm_head: bool = False, **model_kwargs) -> SequenceLogProbs:
    """Sum of completion-token log-probs [N] of every row of ``batch`` under ``model``."""
    per_token, outputs = token_logps(model, batch, fused_lm_head=fused_lm_head, **model_kwargs)
    return SequenceLogProbs(per_token.sum(dim=1), batch["completion_mask"][:, 1:].sum(dim=1), outputs)


@torch.no_grad()
def score(
    model,
    tokenizer,
    prompts: Sequence,
    responses: Sequence,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
) -> SequenceLogProbs:
    """Sequence log-probs of ``responses[i]`` after ``prompts[i]`` under ``model`` (eval mode, no grad).

    Prompts are text or message lists, responses text or assistant message lists, tokenised by `encode`.
    A prompt + response longer than ``max_length`` raises (naming the row) instead of being cut.
    A progress bar (``desc``, rows scored, cleared when done) shows on a terminal or in a notebook; ``progress=False`` or ``PREFOPT_DISABLE_PROGRESS_BARS=1`` keeps it quiet.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    sequences = []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        prompt_ids, (completion_ids,) = encode(tokenizer, prompt, [response], eos_token=tokenizer.eos_token)
        if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
            raise ValueError(
                f"score: row {row} has {len(prompt_ids) + len(completion_ids)} tokens, more than max_length={max_length}"
            )
        sequences.append((prompt_ids, completion_ids))
    device = next(model.parameters()).device
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    logps, lengths = [], []
    try:
        with progress_bar(len(sequences), desc, enabled=progress, unit="row") as bar:
            for start in range(0, len(sequences), batch_size):
                batch = pad_sequences(sequences[start : start + batch_size], pad_token_id)
                result = sequence_logps(model, {key: value.to(device) for key, value in batch.items()})
                logps.append(result.logps.float().cpu())
                lengths.append(result.lengths.cpu())
                bar.update(len(batch["input_ids"]))
    finally:
        model.train(was_training)
    if not logps:
        return SequenceLogProbs(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return SequenceLogProbs(torch.cat(logps), torch.cat(lengths))
