"""``prefopt losses [NAME] [--markdown]``: the loss registry as a table, or one loss's full card."""

from __future__ import annotations

import argparse
from typing import Sequence

from prefopt.losses import list_losses
from prefopt.losses._table import loss_card, markdown_table, terminal_table


def losses_table() -> str:
    """The loss registry as a markdown table: the one the README shows, generated from the specs."""
    return markdown_table()


def run(argv: Sequence[str]) -> None:
    """``prefopt losses [NAME] [--markdown] [--width N]``: a terminal-width table, the README's, or one card."""
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
