"""The main job: train the bundled SmolLM2-135M-Instruct with LoRA on a preference task, on CPU, in minutes.

    prefopt main [--loss dpo] [--output-dir outputs/main] [--max-steps N]

It measures held-out preference accuracy and reward margin before and after training, prints a
before/after table, and writes the LoRA adapter and ``metrics.json`` to the output folder.

Held-out metrics, on the test split (never trained on):
- implicit reward r = beta * (log pi(y|x) - log pi_ref(y|x)) per response, pi_ref = the adapter-disabled
  base; reward accuracy = share of pairs with r_chosen > r_rejected, reward margin = mean(r_chosen - r_rejected).
  Before training a fresh LoRA equals the base, so every reward is 0 (accuracy 0, margin 0);
- log-prob accuracy = share of pairs with log pi(chosen) > log pi(rejected), and the same per token
  (length-normalised): informative before training too.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import set_seed

from prefopt.config import PrefOptConfig
from prefopt.data import get_task
from prefopt.data.evaluation import preference_accuracy
from prefopt.logprobs import score
from prefopt.losses import get_loss, list_losses
from prefopt.models import default_lora_config, default_model
from prefopt.training.fields import servable_fields
from prefopt.training.trainer import Trainer

# Settings, tuned for about 3-5 minutes on 2 CPU cores (float32, LoRA on every linear layer).
TASK = "arithmetic"  # prefopt.data's bundled task; its test split is held out
LOSS = "dpo"
BETA = 0.1
LEARNING_RATE = 5e-4
MAX_STEPS = 24
BATCH_SIZE = 4
MAX_LENGTH = 192  # prompt + response tokens; the arithmetic task's rows are 60-130
NUM_TEST_PAIRS = 48
EVAL_BATCH_SIZE = 16
SEED = 0
OUTPUT_DIR = "outputs/main"


def sequence_logps(
    model, tokenizer, rows: Sequence[dict], batch_size: int = EVAL_BATCH_SIZE, desc: str = "held-out scoring"
) -> dict[str, torch.Tensor]:
    """Summed response log-probs and response lengths, ``{"chosen": [N], "rejected": [N], "*_tokens": [N]}``,
    by `prefopt.logprobs.score` (the trainer's routine and tokenisation)."""
    prompts = [row["prompt"] for row in rows for _ in ("chosen", "rejected")]
    responses = [row[key] for row in rows for key in ("chosen", "rejected")]
    result = score(model, tokenizer, prompts, responses, batch_size=batch_size, desc=desc)  # a progress bar on a terminal
    logps, lengths = result.logps, result.lengths
    return {"chosen": logps[0::2], "rejected": logps[1::2], "chosen_tokens": lengths[0::2], "rejected_tokens": lengths[1::2]}


def preference_metrics(policy: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], beta: float = BETA) -> dict[str, float]:
    """Held-out preference metrics from `sequence_logps` of the policy and the reference (module docstring)."""
    rewards = preference_accuracy(beta * (policy["chosen"] - reference["chosen"]), beta * (policy["rejected"] - reference["rejected"]))
    logps = preference_accuracy(policy["chosen"], policy["rejected"])
    per_token = preference_accuracy(policy["chosen"] / policy["chosen_tokens"], policy["rejected"] / policy["rejected_tokens"])
    return {
        "reward_accuracy": rewards["accuracy"],
        "reward_margin": rewards["mean_margin"],
        "logp_accuracy": logps["accuracy"],
        "logp_per_token_accuracy": per_token["accuracy"],
        "logp_margin": logps["mean_margin"],
        "num_pairs": logps["count"],
    }


def _library_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "prefopt"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _table(before: dict[str, float], after: dict[str, float]) -> str:
    rows = [
        ("implicit reward accuracy", "reward_accuracy", "{:.1%}"),
        ("implicit reward margin", "reward_margin", "{:+.3f}"),
        ("log-prob accuracy", "logp_accuracy", "{:.1%}"),
        ("per-token log-prob accuracy", "logp_per_token_accuracy", "{:.1%}"),
        ("log-prob margin (nats)", "logp_margin", "{:+.2f}"),
    ]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'held-out metric':<{width}}  {'before':>8}  {'after':>8}"]
    for label, key, fmt in rows:
        lines.append(f"{label:<{width}}  {fmt.format(before[key]):>8}  {fmt.format(after[key]):>8}")
    return "\n".join(lines)


def trainable_losses(task: str = TASK) -> list[str]:
    """Registered losses the main job can train on the task's pairwise rows: K = 2 allowed, and every
    field they need has a field provider that can fill it from those rows."""
    first_row = get_task(task).load("pairwise", split="train")[0]
    servable = servable_fields(first_row)
    return [
        name
        for name in list_losses()
        if get_loss(name).responses != "single" and set(get_loss(name).required_fields) <= servable
    ]


def _parse(argv: Sequence[str] | None):
    parser = argparse.ArgumentParser(prog="prefopt main", description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default=LOSS, choices=trainable_losses(), help="registered loss to train with")
    parser.add_argument("--task", default=TASK, help="bundled task (prefopt.data.list_tasks())")
    parser.add_argument("--output-dir", default=OUTPUT_DIR, help="where the adapter and metrics.json go")
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="preference pairs per step")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument(
        "--beta", type=float, default=None,
        help=f"KL strength, also the implicit-reward scale; unset: the loss's own default ({BETA} for losses without one)",
    )
    parser.add_argument("--num-test-pairs", type=int, default=NUM_TEST_PAIRS, help="held-out pairs evaluated")
    parser.add_argument("--seed", type=int, default=SEED)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the main job; returns what it writes to ``metrics.json``."""
    options = _parse(argv)
    started = time.time()
    set_seed(options.seed)
    output_dir = Path(options.output_dir)
    print("[1/5] loading SmolLM2-135M-Instruct with a LoRA adapter (the first run converts the GGUF, ~30 s)", flush=True)
    # The trainer adds the LoRA adapter (peft_config), so the reference is the adapter-disabled base model.
    model, tokenizer = default_model()
    lora = default_lora_config()

    splits = get_task(options.task).load("pairwise")
    train_dataset = splits["train"].shuffle(seed=options.seed)
    test_rows = list(splits["test"].select(range(min(options.num_test_pairs, len(splits["test"])))))
    print(f"[2/5] held-out evaluation before training ({len(test_rows)} pairs of task {options.task!r})", flush=True)
    evaluation_started = time.time()
    # The reference (adapter-disabled base) never changes, and before training the policy equals it.
    reference_logps = sequence_logps(model, tokenizer, test_rows, desc="held-out, before")
    # an explicit --beta goes to the loss; unset, the loss trains with its own default beta
    beta = options.beta if options.beta is not None else get_loss(options.loss).hyperparameters.get("beta", BETA)
    before = preference_metrics(reference_logps, reference_logps, beta=beta)
    evaluation_seconds = time.time() - evaluation_started

    args = PrefOptConfig(
        output_dir=str(output_dir / "trainer"),
        loss=options.loss,
        beta=options.beta,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, options.max_steps // 10),
        max_length=MAX_LENGTH,
        logging_steps=max(1, options.max_steps // 8),
        save_strategy="no",
        report_to=[],
        seed=options.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),  # TRL defaults to bf16 autocast, which on CPU is slower and lossy
        gradient_checkpointing=False,  # TRL's default; a 135M model fits easily and recomputation costs ~30%
        dataloader_num_workers=0,
    )
    print(f"[3/5] training: loss {options.loss!r}, {options.max_steps} steps x {options.batch_size} pairs", flush=True)
    trainer = Trainer(model, args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora)
    model = trainer.model  # the PEFT-wrapped policy
    training_started = time.time()
    train_output = trainer.train()
    training_seconds = time.time() - training_started

    print("[4/5] held-out evaluation after training", flush=True)
    policy_logps = sequence_logps(model, tokenizer, test_rows, desc="held-out, after")
    after = preference_metrics(policy_logps, reference_logps, beta=beta)

    print(f"[5/5] saving the adapter and metrics.json to {output_dir}", flush=True)
    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    result = {
        "task": options.task,
        "loss": options.loss,
        "settings": {
            "beta": beta,
            "learning_rate": options.learning_rate,
            "max_steps": options.max_steps,
            "batch_size": options.batch_size,
            "max_length": MAX_LENGTH,
            "train_pairs_seen": options.max_steps * options.batch_size,
            "train_pairs_available": len(train_dataset),
            "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                     "target_modules": sorted(lora.target_modules) if isinstance(lora.target_modules, set)
                     else lora.target_modules},
            "seed": options.seed,
        },
        "before": before,
        "after": after,
        "train_loss": train_output.training_loss,
        "seconds": {
            "evaluation_each": round(evaluation_seconds, 1),
            "training": round(training_seconds, 1),
            "total": round(time.time() - started, 1),
        },
        "adapter_dir": str(adapter_dir),
        "versions": _library_versions(),
        "hardware": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(_table(before, after))
    print(f"\ntrained in {training_seconds / 60:.1f} min ({result['seconds']['total'] / 60:.1f} min in all); "
          f"adapter: {adapter_dir}, metrics: {output_dir / 'metrics.json'}")
    return result


if __name__ == "__main__":
    main()
