"""Sampling from a policy: `SamplingConfig` (the one set of sampling settings) and `generate`.

    from prefopt.online import SamplingConfig, generate
    responses = generate(model, tokenizer, prompts, n=4, max_new_tokens=64, seed=0)     # [[str] * 4] per prompt
    responses = generate(model, tokenizer, prompts, SamplingConfig(n=4, temperature=0.7))

`generate` renders each prompt with the chat template when the tokenizer has one (a text prompt becomes
one user message), samples ``n`` responses per prompt in batches (left padding), and returns the
response strings. It is deterministic for a seed (the global RNG is left untouched), shows a progress
bar, and reports prompts that would exceed the model's context instead of cutting them.

Every sampler in prefopt (`annotate`, the round loop, f-DPG, the sampling callbacks, ``prefopt annotate`` /
``online`` / ``fdpg``) takes its settings as a `SamplingConfig` or as keyword options overriding one, so the
settings are validated in one place and have one set of defaults.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prefopt.chat import as_conversation, is_conversational
from prefopt.logprobs import token_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled from a policy: the one set of sampling settings and their defaults.

    Args:
        n: responses per prompt. A method that compares several samples of a prompt says how many it
            draws (``annotate`` 8, the CDR paper's; the round loop's ``samples_per_prompt`` 8, INPO's;
            f-DPG's ``samples_per_prompt`` 4, disco's) and sets this field from it.
        max_new_tokens: the longest response, in tokens.
        temperature: softmax temperature; 0 decodes greedily.
        top_p: nucleus sampling threshold in (0, 1]; 1 samples from the whole distribution.
        seed: the sampling seed (the global RNG is left untouched).
        batch_size: prompts per generation batch.
    """

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        for name in ("n", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplingConfig.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SamplingConfig.seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")

    @classmethod
    def of(cls, sampling: SamplingConfig | None = None, **options: Any) -> SamplingConfig:
        """``sampling`` (default: the defaults) with ``options`` replacing fields; an option set to None keeps
        the field. An unknown option raises a TypeError naming it."""
        if sampling is not None and not isinstance(sampling, cls):
            raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; SamplingConfig has {sorted(names)}")
        changes = {name: value for name, value in options.items() if value is not None}
        return dataclasses.replace(sampling or cls(), **changes)

    def replace(self, **changes: Any) -> SamplingConfig:
        return SamplingConfig.of(self, **changes)


def prompt_token_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of the prompt as `prefopt.logprobs.encode` tokenises it (generation prompt included)."""
    prompt = as_conversation(tokenizer, prompt)
    if is_conversational(prompt):
        return token_ids(tokenizer, prompt, add_generation_prompt=True)
    return token_ids(tokenizer, prompt)


def context_length(model, tokenizer) -> int | None:
    """The longest sequence the model takes: its config's position limit, or the tokenizer's."""
    config = getattr(model, "config", None)
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 10**7]
    return min(limits) if limits else None


class PromptTooLongError(ValueError):
    """Prompts whose tokens plus ``max_new_tokens`` exceed the context; ``indices`` lists them."""

    def __init__(self, indices: list[int], lengths: list[int], max_new_tokens: int, context: int):
        self.indices = indices
        shown = ", ".join(f"prompt {i} ({n} tokens)" for i, n in list(zip(indices, lengths))[:5])
        more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
        super().__init__(
            f"{len(indices)} prompt(s) do not fit the model's context of {context} tokens with max_new_tokens="
            f"{max_new_tokens}: {shown}{more}. Shorten them, lower max_new_tokens, or pass on_too_long='skip' "
            "(they then get no responses and are counted)"
        )


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence,
    sampling: SamplingConfig | None = None,
    *,
    on_too_long: str = "raise",
    progress: bool = True,
    **sampling_options: Any,
) -> list[list[str]]:
    """``sampling.n`` sampled responses (strings, special tokens removed) for each prompt.

    ``sampling`` is a `SamplingConfig`; keyword options (``n=4, max_new_tokens=64, seed=0, ...``) override its
    fields (or the defaults). ``model`` may be a plain, PEFT (LoRA) or bitsandbytes 4-bit causal LM; it is put
    in eval mode for the call and restored. ``temperature=0`` decodes greedily (the n responses are then
    identical). Sampling is pure (top-k off, no repetition penalty from the model's generation config). A prompt
    whose tokens + ``max_new_tokens`` exceed the context raises `PromptTooLongError` listing them, or, with
    ``on_too_long="skip"``, gets an empty list and a logged warning.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    sampling = SamplingConfig.of(sampling, **sampling_options)
    n, max_new_tokens, temperature, top_p = sampling.n, sampling.max_new_tokens, sampling.temperature, sampling.top_p
    seed, batch_size = sampling.seed, sampling.batch_size
    if on_too_long not in ("raise", "skip"):
        raise ValueError(f"on_too_long must be 'raise' or 'skip', got {on_too_long!r}")
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    context = context_length(model, tokenizer)
    too_long = [i for i, ids in enumerate(encoded) if context is not None and len(ids) + max_new_tokens > context]
    if too_long:
        error = PromptTooLongError(too_long, [len(encoded[i]) for i in too_long], max_new_tokens, context)
        if on_too_long == "raise":
            raise error
        logger.warning("generate: skipping %s", error)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stochastic = temperature > 0
    config = GenerationConfig(
        do_sample=stochastic,
        temperature=temperature if stochastic else None,
        top_p=top_p if stochastic else None,
        top_k=0 if stochastic else None,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    results: list[list[str]] = [[] for _ in prompts]
    todo = [i for i in range(len(prompts)) if i not in set(too_long)]
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), tqdm(total=len(todo), desc="generating", disable=not progress) as bar:
            torch.manual_seed(seed)
            for start in range(0, len(todo), batch_size):
                rows = todo[start : start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
                    input_ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    attention_mask[r, width - len(encoded[i]) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
                )
                texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
                for r, i in enumerate(rows):
                    results[i] = texts[r * n : (r + 1) * n]
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return results
