"""``prefopt main [--loss dpo] [--output-dir outputs/main]``: the main job (`prefopt.main_job`)."""

from __future__ import annotations

from typing import Sequence

from prefopt.main_job import main as main_job


def run(argv: Sequence[str]) -> dict:
    return main_job(argv)
