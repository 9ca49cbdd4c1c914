"""``prefopt train --config run.yaml [--flag value ...]``: train with a registered loss (TRL style: YAML values,
flags override). Model and data options are `ScriptArguments`'s, the training options `prefopt.PrefOptConfig`'s."""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from transformers import HfArgumentParser

from prefopt.cli.common import ModelArguments, UserError, load_model_and_lora, parse_config_and_flags
from prefopt.config import PrefOptConfig
from prefopt.data import get_task, list_tasks, load_preferences
from prefopt.data.loading import ON_INVALID
from prefopt.losses import list_losses
from prefopt.training.trainer import Trainer

DEFAULT_OUTPUT_DIR = "outputs/train"  # prefopt train's output_dir when neither the YAML nor a flag sets one


@dataclass
class ScriptArguments(ModelArguments):
    """Model and data options of ``prefopt train``; the training options are `prefopt.PrefOptConfig`'s."""

    dataset: str = field(
        default="arithmetic",
        metadata={"help": "A bundled task name (prefopt.data.list_tasks()) or a local .json/.jsonl/.csv/.parquet file."},
    )
    dataset_format: str = field(default="trl", metadata={"help": "prefopt.data format of a dataset file."})
    column_map: str | None = field(
        default=None,
        metadata={"help": "Rename columns of a dataset file before the format adapter: a JSON object "
                  "'{\"question\": \"prompt\"}' or 'question=prompt,answer=chosen'."},
    )
    on_invalid: str = field(
        default="raise",
        metadata={"help": "A dataset file row that fails validation: 'raise' (stop, naming the row) or 'drop' "
                  "(skip it; the dropped rows are counted per reason in the log)."},
    )
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
    groups = (
        ("model and data (prefopt)", [f.name for f in fields(ScriptArguments)]),
        ("loss (prefopt)", list(PrefOptConfig.__annotations__)),
        ("common training options (TRL / transformers)", list(COMMON_TRAINING_OPTIONS)),
    )
    # a name in two groups (PrefOptConfig redeclares TRL's `beta`) is shown once, in the first
    seen: set[str] = set()
    groups = tuple((title, [n for n in names if not (n in seen or seen.add(n))]) for title, names in groups)
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
    return (
        "Registered loss to train with, or a weighted combination 'name:weight,name:weight' (e.g. "
        "'dpo:1.0,sft:0.5'). Unset: TRL's loss_type / loss_weights. One of: "
        + ", ".join(list_losses())
        + ". `prefopt losses` compares them, `prefopt losses NAME` shows one."
    )


def parse_train_arguments(argv: Sequence[str]):
    """``(ScriptArguments, PrefOptConfig)`` from ``--config file.yaml`` and flags (flags win)."""
    argv = list(argv)
    parser = _parser()
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(_short_help(parser), end="")
        raise SystemExit(0)
    parser.set_defaults(output_dir=DEFAULT_OUTPUT_DIR)
    return parse_config_and_flags(parser, argv)


def parse_column_map(text: str | None) -> dict[str, str] | None:
    """``--column_map``: a JSON object or ``a=b,c=d`` -> ``{"a": "b", "c": "d"}``; None when unset."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):  # from a YAML config
        mapping = text
    elif text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"--column_map is not a valid JSON object ({error.msg} at character {error.pos})") from None
    else:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        bad = ["=".join(pair) for pair in pairs if len(pair) != 2 or not all(part.strip() for part in pair)]
        if bad:
            raise UserError(f"--column_map entries must be source=target, got {bad}")
        mapping = {source.strip(): target.strip() for source, target in pairs}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UserError("--column_map must map column names to column names (strings)")
    return mapping


def _dataset_source(name: str, option: str) -> str:
    """A file path that exists; otherwise a "not found" error, naming the closest task for a task-like name."""
    if Path(name).is_file():
        return name
    looks_like_a_file = Path(name).suffix != "" or os.sep in name or "/" in name
    if looks_like_a_file:
        raise UserError(f"{option} file {name!r} not found")
    get_task(name)  # raises "unknown task ... (did you mean ...?)"
    return name


def _load_datasets(script_args: ScriptArguments):
    if script_args.on_invalid not in ON_INVALID:
        raise UserError(f"--on_invalid must be one of {list(ON_INVALID)}, got {script_args.on_invalid!r}")
    column_map = parse_column_map(script_args.column_map)
    options = dict(format=script_args.dataset_format, column_map=column_map, on_invalid=script_args.on_invalid)
    if script_args.dataset in list_tasks():
        if column_map:
            raise UserError("--column_map applies to a dataset file; the bundled tasks are already in prefopt's schema")
        splits = get_task(script_args.dataset).load(script_args.dataset_form)
        train = splits["train"]
        evaluation = splits["test"] if "test" in splits else None
    else:
        train = load_preferences(_dataset_source(script_args.dataset, "--dataset"), **options)
        evaluation = None
    if script_args.eval_dataset:
        evaluation = load_preferences(_dataset_source(script_args.eval_dataset, "--eval_dataset"), **options)
    return train, evaluation


def run(argv: Sequence[str]) -> None:
    script_args, training_args = parse_train_arguments(argv)
    # The data first: a wrong file or row is reported in a second, not after the model has loaded.
    train_dataset, eval_dataset = _load_datasets(script_args)
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise UserError("eval_strategy is set but there is no eval dataset (--eval_dataset)")
    model, tokenizer, lora = load_model_and_lora(script_args, training_args)
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
