"""The ``prefopt`` command: `prefopt.cli.main` (the command table), `prefopt.cli.common` (the error contract and
the options every command shares), and one module per command. A face (`prefopt._lazy`)."""

from prefopt._lazy import lazy_face

_TABLE = {"COMMANDS": "prefopt.cli.main", "UserError": "prefopt.cli.common"}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
