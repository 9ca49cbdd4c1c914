"""Progress bars for prefopt's long-running loops (tqdm, as transformers uses).

A bar appears only when it helps: on a terminal (tqdm's own rule: quiet when the output is not a TTY)
or in a notebook, from the start of the work (a bar only updates between batches, and one batch of
the default model can take ten seconds; ``leave=False`` clears it when done), and never when disabled: per call (``progress=False``), for the process by the environment variable
``PREFOPT_DISABLE_PROGRESS_BARS=1``, or through transformers' switch
(``transformers.utils.logging.disable_progress_bar()``), which also silences the Trainer's own bar.
"""

from __future__ import annotations

import os

DELAY_SECONDS = 0.0  # seconds before a bar first shows
ENVIRONMENT_SWITCH = "PREFOPT_DISABLE_PROGRESS_BARS"


def progress_enabled() -> bool:
    """False when progress bars are switched off for this process (environment or transformers)."""
    if os.environ.get(ENVIRONMENT_SWITCH, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from transformers.utils import logging as transformers_logging

    return transformers_logging.is_progress_bar_enabled()


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "it"):
    """A tqdm bar over ``total`` items (use as a context manager; ``update(k)`` after each chunk)."""
    from tqdm.auto import tqdm

    # disable=None is tqdm's rule: off when the output is not a terminal (on in notebooks)
    disable = None if enabled and progress_enabled() else True
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, delay=DELAY_SECONDS, leave=False, dynamic_ncols=True)
