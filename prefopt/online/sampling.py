"""Online preference data: sample from a policy, score the samples, emit rows the Trainer trains on.

    from prefopt.online import annotate, generate
    responses = generate(model, tokenizer, prompts, n=4, max_new_tokens=64, seed=0)     # [[str] * 4] per prompt
    result = annotate(prompts, model, tokenizer, reward, n=8, pairing="best_vs_random")
    Trainer(model, args=PrefOptConfig("out", loss="simpo"), train_dataset=result.dataset, processing_class=tokenizer)

`generate` renders each prompt with the chat template when the tokenizer has one (a text prompt becomes
one user message), samples ``n`` responses per prompt in batches (left padding), and returns the
response strings. It is deterministic for a seed (the global RNG is left untouched), shows a progress
bar, and reports prompts that would exceed the model's context instead of cutting them.

`annotate` samples, scores every sample with a reward (`prefopt.online.rewards`), and pairs them:
``best_vs_random`` (CDR: the best sample against one drawn uniformly among the strictly worse ones),
``best_vs_worst``, or ``ranked`` (one K-wise row, best first, with its scores). Tied scores never
become preferences: they are counted in the report and left out.

These are the sampling and labelling steps of the online loops (INPO / online VPO rounds, f-DPG), which
are built around `Trainer.train()`, not inside it. f-DPG's on-policy trainer, `FDPGTrainer`, is importable
from `prefopt.online` (it lives in `prefopt.methods.fdpg`).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from prefopt.chat import as_conversation, as_response, is_conversational

logger = logging.getLogger(__name__)

PAIRINGS = ("best_vs_random", "best_vs_worst", "ranked")


# ------------------------------------------------------------------------------------------- prompts


def prompt_token_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of the prompt as `prefopt.logprobs.encode` tokenises it (generation prompt included)."""
    from prefopt.logprobs import token_ids

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


# ---------------------------------------------------------------------------------------- generation


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
    *,
    n: int = 4,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    on_too_long: str = "raise",
    progress: bool = True,
) -> list[list[str]]:
    """``n`` sampled responses (strings, special tokens removed) for each prompt.

    ``model`` may be a plain, PEFT (LoRA) or bitsandbytes 4-bit causal LM; it is put in eval mode for
    the call and restored. ``temperature=0`` decodes greedily (the n responses are then identical).
    Sampling is pure (top-k off, no repetition penalty from the model's generation config). A prompt
    whose tokens + ``max_new_tokens`` exceed the context raises `PromptTooLongError` listing them, or,
    with ``on_too_long="skip"``, gets an empty list and a logged warning.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"generate: n, max_new_tokens and batch_size must be >= 1, got {n}, {max_new_tokens}, {batch_size}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"generate: temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
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
    sampling = temperature > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
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


# ---------------------------------------------------------------------------------------- annotation


@dataclass
class Annotation:
    """Rows in prefopt's canonical schema (pairwise or K-wise, with scores) and what was left out."""

    rows: list[dict]
    report: dict[str, int] = field(default_factory=dict)

    @property
    def dataset(self):
        """The rows as a `datasets.Dataset`, ready for `prefopt.Trainer`."""
        from datasets import Dataset

        return Dataset.from_list(self.rows)

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for row in self.rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


def pair_samples(
    prompt: Any, responses: Sequence[Any], scores: Sequence[float], pairing: str, rng: random.Random, report: dict
) -> dict | None:
    """One canonical row from a prompt's scored samples, or None when every sample ties (counted in ``report``).

    ``report["ties"]`` counts samples left out because their score equals one kept as better or worse."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
    scores = [float(score) for score in scores]
    best = max(range(len(scores)), key=lambda i: scores[i])  # the first best sample when several tie
    if pairing == "ranked":
        kept, seen = [], set()
        for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
            if scores[i] in seen:
                report["ties"] += 1
                continue
            seen.add(scores[i])
            kept.append(i)
        if len(kept) < 2:
            report["prompts_all_tied"] += 1
            return None
        return {"prompt": prompt, "completions": [responses[i] for i in kept], "scores": [scores[i] for i in kept]}
    report["ties"] += sum(1 for i in range(len(scores)) if i != best and scores[i] == scores[best])
    if pairing == "best_vs_random":
        worse = [i for i in range(len(scores)) if scores[i] < scores[best]]
        if not worse:
            report["prompts_all_tied"] += 1
            return None
        rejected = rng.choice(worse)
    else:  # best_vs_worst
        rejected = min(range(len(scores)), key=lambda i: scores[i])
        if scores[rejected] == scores[best]:
            report["prompts_all_tied"] += 1
            return None
        report["ties"] += sum(1 for i in range(len(scores)) if i != rejected and scores[i] == scores[rejected])
    return {
        "prompt": prompt,
        "chosen": responses[best],
        "rejected": responses[rejected],
        "score_chosen": scores[best],
        "score_rejected": scores[rejected],
    }


def annotate(
    prompts: Sequence,
    policy,
    tokenizer,
    reward: Callable[[Sequence, Sequence], torch.Tensor],
    *,
    n: int = 8,
    pairing: str = "best_vs_random",
    seed: int = 0,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    progress: bool = True,
) -> Annotation:
    """Sample ``n`` responses per prompt from ``policy``, score them with ``reward``, pair them.

    Rows are conversational (message lists) when the tokenizer has a chat template, plain text otherwise,
    so the Trainer tokenises them as they were generated. The report counts prompts, samples, rows,
    ``ties`` (samples not made preferences because of an equal score), ``prompts_all_tied`` (no row) and
    ``prompts_too_long`` (skipped before sampling, see `generate`).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
    if n < 2:
        raise ValueError(f"annotate needs n >= 2 samples per prompt to compare, got {n}")
    samples = generate(
        policy, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        seed=seed, batch_size=batch_size, on_too_long="skip", progress=progress,
    )
    report = {"prompts": len(prompts), "samples": 0, "rows": 0, "ties": 0, "prompts_all_tied": 0, "prompts_too_long": 0}
    conversations = [as_conversation(tokenizer, prompt) for prompt in prompts]
    flat_prompts, flat_responses, owners = [], [], []
    for index, responses in enumerate(samples):
        if not responses:
            report["prompts_too_long"] += 1
        for response in responses:
            flat_prompts.append(conversations[index])
            flat_responses.append(response)
            owners.append(index)
    report["samples"] = len(flat_responses)
    scores = reward(flat_prompts, flat_responses) if flat_responses else torch.zeros(0)
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() != len(flat_responses):
        raise ValueError(f"the reward returned {scores.numel()} values for {len(flat_responses)} responses")
    if not bool(torch.isfinite(scores).all()):
        row = int(torch.nonzero(~torch.isfinite(scores))[0, 0])
        raise ValueError(f"the reward is not finite ({scores[row].item()}) for sample {row} of prompt {owners[row]}")
    rng = random.Random(seed)
    rows = []
    for index, responses in enumerate(samples):
        if not responses:
            continue
        prompt_scores = [scores[j].item() for j, owner in enumerate(owners) if owner == index]
        responses = [as_response(conversations[index], response) for response in responses]
        row = pair_samples(conversations[index], responses, prompt_scores, pairing, rng, report)
        if row is not None:
            rows.append(row)
    report["rows"] = len(rows)
    if report["ties"] or report["prompts_all_tied"] or report["prompts_too_long"]:
        logger.warning(
            "annotate: %d rows from %d prompts; %d tied samples not made preferences, %d prompts with all samples "
            "tied, %d prompts too long to sample", report["rows"], report["prompts"], report["ties"],
            report["prompts_all_tied"], report["prompts_too_long"],
        )
    return Annotation(rows, report)
