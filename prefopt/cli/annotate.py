"""``prefopt annotate --prompts arithmetic --output pairs.jsonl [--reward task|cdr ...]``: sample, score, pair (JSONL)."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from peft import PeftModel

from prefopt.cli.common import UserError
from prefopt.data import get_task, list_tasks
from prefopt.data.prompts import read_prompts
from prefopt.models import default_model_path, load_model
from prefopt.online.annotation import ANNOTATION_SAMPLES, PAIRINGS
from prefopt.online.annotation import annotate as annotate_prompts
from prefopt.online.rewards import DensityRatioReward, FunctionReward
from prefopt.online.sampling import SamplingConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt annotate",
        description="Sample n responses per prompt from a policy, score them with a reward, and write preference "
        "rows (pairwise or K-wise, with scores) as JSONL, ready for `prefopt train --dataset FILE`. Tied scores "
        "never become preferences (counted in the report).",
    )
    parser.add_argument("--prompts", required=True,
                        help="a bundled task name (its train prompts), a .jsonl file with a 'prompt' field per line "
                        "(text or messages), or a .txt file with one prompt per line")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--model", default="default", help="policy checkpoint folder or Hub id; 'default' = SmolLM2-135M-Instruct")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder loaded on top of --model (the policy)")
    parser.add_argument("--quantization", default=None, choices=["4bit", "8bit"], help="load the base weights quantised")
    parser.add_argument("--reward", default="task", choices=["task", "cdr"],
                        help="'task': the bundled task's ground-truth reward (--task); 'cdr': the density ratio "
                        "strong/weak (strong = --model with --adapter, weak = the same model with the adapter "
                        "disabled, or --weak-model)")
    parser.add_argument("--task", default=None, help="bundled task whose reward --reward task uses (default: --prompts)")
    parser.add_argument("--weak-model", default=None, help="CDR weak model (default: --model with the adapter disabled)")
    parser.add_argument("--system-prompt", default=None, help="CDR customised prompt: system message for both models")
    parser.add_argument("--criteria", action="append", default=None, help="CDR criteria (repeatable), added to the system message")
    parser.add_argument("--n", type=int, default=ANNOTATION_SAMPLES, help="samples per prompt (the CDR paper uses 8)")
    parser.add_argument("--pairing", default="best_vs_random", choices=list(PAIRINGS))
    parser.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    parser.add_argument("--top-p", type=float, default=SamplingConfig.top_p)
    parser.add_argument("--batch-size", type=int, default=SamplingConfig.batch_size, help="prompts per generation batch")
    parser.add_argument("--seed", type=int, default=SamplingConfig.seed)
    return parser


def run(argv: Sequence[str]) -> dict:
    """``prefopt annotate``: returns the report it prints."""
    options = _parser().parse_args(argv)
    prompts = read_prompts(options.prompts)
    if options.num_prompts is not None:
        prompts = prompts[: options.num_prompts]
    path = default_model_path() if options.model == "default" else options.model
    policy, tokenizer = load_model(path, quantization=options.quantization)
    if options.adapter:
        policy = PeftModel.from_pretrained(policy, options.adapter)
    if options.reward == "task":
        task = options.task or options.prompts
        if task not in list_tasks():
            raise UserError(f"--reward task needs --task (one of {', '.join(list_tasks())})")
        reward = FunctionReward(get_task(task).reward)
    else:
        weak = None
        if options.weak_model:
            weak, _ = load_model(options.weak_model, quantization=options.quantization)
        elif not options.adapter:
            raise UserError("--reward cdr needs --adapter (strong = with it, weak = without) or --weak-model")
        reward = DensityRatioReward(policy, weak, tokenizer, system_prompt=options.system_prompt, criteria=options.criteria)
    sampling = SamplingConfig(n=options.n, max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                              top_p=options.top_p, seed=options.seed, batch_size=options.batch_size)
    result = annotate_prompts(prompts, policy, tokenizer, reward, pairing=options.pairing, sampling=sampling)
    result.to_jsonl(options.output)
    print(json.dumps(result.report))
    print(f"wrote {result.report['rows']} rows to {options.output}")
    return result.report
