"""Annotation: sample responses, score them with a reward, and pair them into preference rows.

    from prefopt.online import annotate
    result = annotate(prompts, model, tokenizer, reward, n=8, pairing="best_vs_random")
    Trainer(model, args=PrefOptConfig("out", loss="simpo"), train_dataset=result.dataset, processing_class=tokenizer)

`annotate` samples (`prefopt.online.sampling.generate`), scores every sample with a reward
(`prefopt.online.rewards`), and pairs them: ``best_vs_random`` (CDR: the best sample against one drawn
uniformly among the strictly worse ones), ``best_vs_worst``, or ``ranked`` (one K-wise row, best first, with
its scores). Tied scores never become preferences: they are counted in the report and left out.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from prefopt.chat import as_conversation, as_response
from prefopt.online.sampling import SamplingConfig, generate

logger = logging.getLogger(__name__)

PAIRINGS = ("best_vs_random", "best_vs_worst", "ranked")
# Samples compared per prompt when annotate is given no count: the CDR paper's (Xu et al. 2024).
ANNOTATION_SAMPLES = 8



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
    pairing: str = "best_vs_random",
    sampling: SamplingConfig | None = None,
    progress: bool = True,
    **sampling_options: Any,
) -> Annotation:
    """Sample ``n`` responses per prompt from ``policy``, score them with ``reward``, pair them.

    Sampling settings are a `SamplingConfig` (``sampling``) and/or keyword options (``n=8, max_new_tokens=64,
    seed=0, ...``) overriding it; with neither setting ``n``, ``n`` is `ANNOTATION_SAMPLES` (8).

    Rows are conversational (message lists) when the tokenizer has a chat template, plain text otherwise,
    so the Trainer tokenises them as they were generated. The report counts prompts, samples, rows,
    ``ties`` (samples not made preferences because of an equal score), ``prompts_all_tied`` (no row) and
    ``prompts_too_long`` (skipped before sampling, see `generate`).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
    if sampling is None:
        sampling_options.setdefault("n", ANNOTATION_SAMPLES)
    sampling = SamplingConfig.of(sampling, **sampling_options)
    if sampling.n < 2:
        raise ValueError(f"annotate needs n >= 2 samples per prompt to compare, got {sampling.n}")
    samples = generate(policy, tokenizer, prompts, sampling, on_too_long="skip", progress=progress)
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
    rng = random.Random(sampling.seed)
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
