"""``python -m prefopt``: the same as the ``prefopt`` command."""

from prefopt.cli.main import main

main()
