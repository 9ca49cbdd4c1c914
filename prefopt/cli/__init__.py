"""The ``prefopt`` command (`prefopt.cli.main`). A face (`prefopt._lazy`)."""

from prefopt._lazy import lazy_face

_TABLE = {"main": "prefopt.cli.main", "UserError": "prefopt.cli.main"}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
