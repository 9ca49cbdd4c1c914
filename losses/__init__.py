"""prefopt.losses: a strict registry of preference losses, each a pure function of a `LogProbs` batch.

    from prefopt.losses import LogProbs, get_loss, list_losses, register_loss
    per_example = get_loss("rdpo")(batch, beta=0.1, epsilon=0.2)   # Tensor[B]

Importing this package registers every built-in loss (one module each, below).
"""

from ._batch import LOGPROBS_FIELDS, LogProbs
from ._combine import WeightedLoss, combine_losses
from ._registry import LossSpec, Range, get_loss, list_losses, register_loss, unregister_loss
from .f_divergence import F_DIVERGENCES, apply_f_divergence, f_prime
from .per_token import length_desensitized_logps, wpo_weights

# Built-in losses register themselves on import (one module each).
from . import (  # noqa: E402,F401  isort: skip
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    bco_pair,
    bvpo,
    cdpo,
    cdr,
    discopop,
    dpo,
    exo_pair,
    fdpg,
    hinge,
    inpo,
    ipo,
    nca_pair,
    plackett_luce,
    rdpo,
    rpo,
    sft,
    sigmoid_norm,
    simpo,
    sppo_hard,
    vpo,
)

__all__ = [
    "F_DIVERGENCES",
    "LOGPROBS_FIELDS",
    "LogProbs",
    "LossSpec",
    "Range",
    "WeightedLoss",
    "apply_f_divergence",
    "combine_losses",
    "f_prime",
    "get_loss",
    "length_desensitized_logps",
    "list_losses",
    "register_loss",
    "unregister_loss",
    "wpo_weights",
]
