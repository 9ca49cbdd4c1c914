"""`python -m prefopt.losses [--update-readme README.md]`: print the loss table, or refresh the README's."""

import argparse

from ._table import markdown_table, update_readme

parser = argparse.ArgumentParser(prog="python -m prefopt.losses", description=__doc__)
parser.add_argument("--update-readme", metavar="PATH", help="rewrite the table between the README's markers")
arguments = parser.parse_args()
if arguments.update_readme:
    print("updated" if update_readme(arguments.update_readme) else "already up to date")
else:
    print(markdown_table())
