"""The ``prefopt`` command (also ``python -m prefopt``): a table of commands, one file each.

    prefopt losses [NAME] [--markdown]                   the loss registry as a table, or one loss's full card
    prefopt train --config run.yaml [--flag value ...]   train (TRL style: YAML values, flags override)
    prefopt main [--loss dpo] [--output-dir outputs/main]  the main job (see prefopt.main_job)
    prefopt annotate --prompts arithmetic --output pairs.jsonl [--reward task|cdr ...]   sample, score, pair (JSONL)
    prefopt online --config run.yaml [--flag value ...]  rounds of sample -> rank -> train (INPO, online VPO, iterative DPO)
    prefopt fdpg --prompts arithmetic --target rlhf|constraint [--divergence js ...]   on-policy f-DPG

Each command is a module of this package with a ``run(argv)`` function; adding a command is one file and one
row of `COMMANDS` (its module and a one-line summary for ``prefopt --help``). A mistake in what was asked prints one line,
``prefopt <command>: error: ...``, and exits with status 2; ``--debug`` (anywhere) shows the traceback too
(`prefopt.cli.common`).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Sequence

from prefopt.cli.common import reporting_user_errors, take_debug_flag

# command -> (the module that runs it, what it does). A module is imported only when its command runs (start-up
# time: `prefopt --help` and `prefopt losses` never import TRL).
COMMANDS = {
    "losses": ("prefopt.cli.losses", "the registered losses: a table, or one loss's card"),
    "train": ("prefopt.cli.train", "train with a registered loss (YAML config and flags, TRL style)"),
    "main": ("prefopt.cli.job", "the main job: train the bundled model with LoRA on a task, held-out metrics before and after"),
    "annotate": ("prefopt.cli.annotate", "sample responses, score them with a reward, write preference rows (JSONL)"),
    "online": ("prefopt.cli.online", "rounds of sample -> rank -> train (INPO, online VPO, iterative DPO)"),
    "fdpg": ("prefopt.cli.fdpg", "on-policy f-DPG towards a reward-tilted or constrained target"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv, debug = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv else ""
    with reporting_user_errors(command, debug):
        dispatch(argv)


def dispatch(argv: list[str]):
    """Run the command named by ``argv[0]`` with the rest; returns what it returns."""
    commands = "\n".join(f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="prefopt", description="Preference optimisation for language models.",
                                     epilog=f"commands:\n{commands}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), help="what to run; '<command> --help' for its options")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.parse_args([command])  # prints the usage error
    module, _ = COMMANDS[command]
    return import_module(module).run(rest)


if __name__ == "__main__":
    main()
