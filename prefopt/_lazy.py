"""Package faces: the public names a package re-exports, imported on first use.

    __getattr__, __dir__ = lazy_face(__name__, {"Trainer": "prefopt.training.trainer", ...})

Every ``__init__.py`` of prefopt is such a face and nothing else. Lazy for start-up time: ``import prefopt``
(which every ``prefopt.<module>`` import runs first) must not import TRL and transformers, and importing one
module of a package (``prefopt.online.sampling``) must not import the rest of it. A face sits above every
floor: users import it, the package's own modules never do (they import the module that defines a name).
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable, Mapping


def lazy_face(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to the module defining it."""
    table = dict(table)

    def __getattr__(name: str):
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
