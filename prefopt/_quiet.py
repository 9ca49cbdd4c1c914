"""Keep prefopt's output to what a user must act on.

Two kinds of third-party noise reached every prefopt command (``--help`` included):

- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is
  imported on a CPU with AVX512-BF16 and the optional ``kernels`` package is absent. The fallback it
  then uses is bitsandbytes' own CPU 4-bit path, which works; the optional kernel is downloaded
  from a model hub, which prefopt does not use. A logging filter drops that one message. Since
  transformers 5.25 requires ``kernels``, the package is present and, offline (``HF_HUB_OFFLINE=1``),
  logs "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'" on the same
  import before the download fails; that message, for that one repository, is dropped too.
- transformers 5.23 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*`` and warns
  (FutureWarning) on every use of the old names, which TRL's ``disable_gradient_checkpointing``
  still calls once per reference forward pass. prefopt uses `activation_checkpointing_disabled`
  instead, which calls the new names where they exist, so there is nothing to silence. PEFT's
  ``get_peft_model`` (called by prefopt and by TRL's trainer) reads the old name once;
  `renamed_checkpointing_warnings_ignored` drops exactly that warning around those calls.

Everything else (deprecations a user's own code triggers, real errors) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

# (logger name, start of the message) of log records that tell a prefopt user nothing they can act on.
KNOWN_NOISE = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_known_noise() -> None:
    """Install the log filters for `KNOWN_NOISE` (idempotent; imports nothing)."""
    for logger_name, prefix in KNOWN_NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(existing, _DropMessages) and prefix in existing.prefixes for existing in logger.filters):
            logger.addFilter(_DropMessages((prefix,)))


# transformers' FutureWarning for the renamed checkpointing API (the user's code is not the caller).
_RENAMED_CHECKPOINTING = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed in v6"


@contextlib.contextmanager
def renamed_checkpointing_warnings_ignored() -> Iterator[None]:
    """Ignore transformers' renamed-checkpointing FutureWarnings raised by PEFT/TRL inside the block
    (usable as a decorator)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RENAMED_CHECKPOINTING, category=FutureWarning)
        yield


@contextlib.contextmanager
def activation_checkpointing_disabled(model: Any, checkpointing_kwargs: dict | None = None) -> Iterator[None]:
    """Turn activation (gradient) checkpointing off for the block and back on afterwards.

    The same as TRL's ``disable_gradient_checkpointing``, but through transformers' new
    ``activation_checkpointing_*`` names when the model has them (no FutureWarning per call).
    """
    if hasattr(model, "activation_checkpointing_enable"):
        was_enabled = model.is_activation_checkpointing
        disable, enable = model.activation_checkpointing_disable, model.activation_checkpointing_enable
        enable_kwargs = {"activation_checkpointing_kwargs": checkpointing_kwargs}
    else:  # transformers < 5.23
        was_enabled = model.is_gradient_checkpointing
        disable, enable = model.gradient_checkpointing_disable, model.gradient_checkpointing_enable
        enable_kwargs = {"gradient_checkpointing_kwargs": checkpointing_kwargs}
    if was_enabled:
        disable()
    try:
        yield
    finally:
        if was_enabled:
            enable(**enable_kwargs)
