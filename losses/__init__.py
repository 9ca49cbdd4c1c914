"""prefopt.losses: a strict registry of preference losses, each a pure function of a `LogProbs` batch.

    from prefopt.losses import LogProbs, get_loss, list_losses, register_loss
    per_example = get_loss("rdpo")(batch, beta=0.1, epsilon=0.2)   # Tensor[B]

Importing this package registers every built-in loss (one module each, below).
"""

from ._batch import LOGPROBS_FIELDS, LogProbs
from ._registry import LossSpec, get_loss, list_losses, register_loss, unregister_loss

# Built-in losses register themselves on import; the order here is irrelevant.
from . import dpo  # noqa: E402,F401  isort: skip

__all__ = [
    "LOGPROBS_FIELDS",
    "LogProbs",
    "LossSpec",
    "get_loss",
    "list_losses",
    "register_loss",
    "unregister_loss",
]
