"""``prefopt online``: `prefopt.online.train_online` from the command line.

    prefopt online --prompts arithmetic --loss inpo --rounds 3 --samples_per_prompt 8 --output_dir runs/inpo
    prefopt online --config online.yaml            # YAML keys = option names; flags override the file

Options are those of three dataclasses: `OnlineArguments` (model, prompts, reward), `OnlineConfig` (the
round loop) and `prefopt.PrefOptConfig` (each round's training; ``output_dir`` is the run folder, and
running the same command again resumes it). Under ``accelerate launch`` the training steps are
distributed by the Trainer; sampling, ranking and evaluation run on every process with the same seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

from transformers import HfArgumentParser

from prefopt.cli.common import ModelArguments, UserError, load_model_and_lora, parse_config_and_flags
from prefopt.config import PrefOptConfig
from prefopt.data import get_task, list_tasks
from prefopt.data.prompts import read_prompts
from prefopt.online.rewards import FunctionReward
from prefopt.online.rounds import OnlineConfig, train_online


@dataclass
class OnlineArguments(ModelArguments):
    """Model, prompts and reward of ``prefopt online``."""

    prompts: str = field(
        default="arithmetic",
        metadata={"help": "A bundled task name (its train prompts), a .jsonl file with a 'prompt' field per line "
                  "(text or messages), or a .txt file with one prompt per line."},
    )
    task: str | None = field(
        default=None,
        metadata={"help": "Bundled task whose ground-truth reward ranks the samples (Bradley-Terry oracle); "
                  "default: --prompts when it names a task."},
    )
    num_prompts: int | None = field(default=None, metadata={"help": "Train on the first N prompts."})
    eval_prompts: str | None = field(
        default=None, metadata={"help": "Prompts of the per-round metrics (same forms as --prompts); default: the training prompts."}
    )
    num_eval_prompts: int | None = field(default=None, metadata={"help": "Evaluate on the first N evaluation prompts."})


def _parser():
    parser = HfArgumentParser(
        (OnlineArguments, OnlineConfig, PrefOptConfig),
        prog="prefopt online",
        description="Rounds of sample -> rank with the task's reward as a Bradley-Terry oracle -> train (INPO with "
        "--loss inpo, online VPO with --loss vpo, iterative DPO with --loss dpo or any offline loss). --config "
        "FILE.yaml sets any option below; options on the command line override the file. Running again with "
        "the same --output_dir resumes after the last finished round (or inside a round from its checkpoint).",
    )
    parser.set_defaults(output_dir="outputs/online", loss="inpo")
    return parser


def parse_online_arguments(argv: Sequence[str]):
    """``(OnlineArguments, OnlineConfig, PrefOptConfig)`` from ``--config file.yaml`` and flags (flags win)."""
    return parse_config_and_flags(_parser(), argv)


def run(argv: Sequence[str]) -> dict:
    """Run ``prefopt online``; returns (and prints) the per-round history."""
    script_args, online_config, training_args = parse_online_arguments(argv)
    task = script_args.task or (script_args.prompts if script_args.prompts in list_tasks() else None)
    if task not in list_tasks():
        raise UserError(f"--task must name the bundled task whose reward ranks samples ({', '.join(list_tasks())})")
    prompts = read_prompts(script_args.prompts)[: script_args.num_prompts]
    eval_prompts = None
    if script_args.eval_prompts:
        eval_prompts = read_prompts(script_args.eval_prompts)[: script_args.num_eval_prompts]
    model, tokenizer, lora = load_model_and_lora(script_args, training_args)
    result = train_online(
        model, tokenizer, prompts, loss=training_args.loss, reward=FunctionReward(get_task(task).reward),
        args=training_args, config=online_config, peft_config=lora, eval_prompts=eval_prompts,
    )
    for entry in result.history:
        print(json.dumps(entry))
    print(f"policy after round {len(result.history)}: {result.output_dir}/round-{len(result.history)}/policy")
    return {"history": result.history, "output_dir": result.output_dir}
