"""``prefopt fdpg --prompts arithmetic --target rlhf|constraint [--divergence js ...]``: on-policy f-DPG
(`prefopt.methods.fdpg.FDPGTrainer`), printing the per-step metrics and saving the adapter."""

from __future__ import annotations

import argparse
import json
import re
from typing import Sequence

import torch

from prefopt.cli.common import UserError
from prefopt.config import PrefOptConfig
from prefopt.data import get_task, list_tasks
from prefopt.data.prompts import read_prompts
from prefopt.losses import get_loss
from prefopt.methods.fdpg.trainer import TARGETS, FDPGTrainer
from prefopt.models import default_lora_config, default_model_path, load_model
from prefopt.online.rewards import FunctionReward
from prefopt.online.sampling import SamplingConfig


def _parser():
    parser = argparse.ArgumentParser(
        prog="prefopt fdpg",
        description="On-policy f-DPG (Go et al. 2023): train a policy (LoRA by default) towards P = pi_ref exp(r/beta) "
        "(--target rlhf) or pi_ref restricted to responses satisfying a constraint (--target constraint, GDC). Prints "
        "the per-step metrics (divergence to the target, KL to the reference, reward or constraint satisfaction, "
        "distinct-n, entropy) and saves the adapter.",
    )
    parser.add_argument("--prompts", default="arithmetic", help="a bundled task name (its train prompts), a .jsonl file "
                        "with a 'prompt' field per line, or a .txt file with one prompt per line")
    parser.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--model", default="default", help="checkpoint folder or Hub id; 'default' = SmolLM2-135M-Instruct")
    parser.add_argument("--no-lora", action="store_true", help="train every weight (default: a LoRA adapter, r=16)")
    parser.add_argument("--target", default="rlhf", choices=list(TARGETS))
    parser.add_argument("--reward", default="task", choices=["task"],
                        help="rlhf target's reward: the bundled task's ground truth (--task)")
    parser.add_argument("--beta", type=float, default=0.1, help="rlhf target: P = pi_ref exp(r / beta)")
    parser.add_argument("--constraint", default="task",
                        help="constraint target's b(y): 'task' (the bundled task's reward is 1.0, e.g. a correct answer) "
                        "or 'regex:PATTERN' (the response matches PATTERN)")
    parser.add_argument("--task", default=None, help="bundled task of --reward/--constraint task (default: --prompts)")
    parser.add_argument("--divergence", default=get_loss("fdpg").hyperparameters["divergence"],
                        choices=list(get_loss("fdpg").choices["divergence"]))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--output-dir", default="outputs/fdpg")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: Sequence[str]) -> list[dict]:
    """``prefopt fdpg``: returns the per-step logs it prints."""
    options = _parser().parse_args(argv)
    prompts = read_prompts(options.prompts)[: options.num_prompts]
    task_name = options.task or options.prompts
    uses_task = (options.target == "rlhf") or options.constraint == "task"
    if uses_task and task_name not in list_tasks():
        raise UserError(f"the task reward/constraint needs --task (one of {', '.join(list_tasks())})")
    reward = constraint = None
    if options.target == "rlhf":
        reward = FunctionReward(get_task(task_name).reward)
    elif options.constraint == "task":
        task = get_task(task_name)
        constraint = lambda prompt, response: task.reward(prompt, response) == 1.0  # noqa: E731
    elif options.constraint.startswith("regex:"):
        pattern = re.compile(options.constraint[len("regex:") :])
        constraint = lambda prompt, response: pattern.search(response) is not None  # noqa: E731
    else:
        raise UserError(f"--constraint must be 'task' or 'regex:PATTERN', got {options.constraint!r}")
    path = default_model_path() if options.model == "default" else options.model
    model, tokenizer = load_model(path)
    args = PrefOptConfig(
        options.output_dir, loss="fdpg", loss_kwargs={"divergence": options.divergence}, max_steps=options.steps,
        per_device_train_batch_size=options.prompts_per_step, learning_rate=options.learning_rate,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", seed=options.seed,
        gradient_checkpointing=False, disable_tqdm=True, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
    )
    trainer = FDPGTrainer(
        model, tokenizer, prompts, target=options.target, reward=reward, beta=options.beta, constraint=constraint,
        samples_per_prompt=options.samples_per_prompt, max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, args=args, peft_config=None if options.no_lora else default_lora_config(),
    )
    trainer.train()
    trainer.save_model(options.output_dir)
    logs = [log for log in trainer.state.log_history if "fdpg/divergence" in log]
    print(json.dumps(logs[-1] if logs else {}, indent=1))
    print(f"saved to {options.output_dir}")
    return logs
