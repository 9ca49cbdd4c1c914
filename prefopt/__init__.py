"""prefopt: preference optimisation for language models.

    from prefopt import Trainer, PrefOptConfig      # drop-in for trl.DPOTrainer / trl.DPOConfig
    from prefopt.losses import get_loss, list_losses, LogProbs, register_loss
    from prefopt.data import load_preferences
    trainer.summary(); prefopt.plot_history(trainer.state.log_history)   # after train(), in a notebook

Heavy modules (trl, transformers) are imported on first use, so `import prefopt.losses` stays light.
"""

from importlib import import_module

from prefopt._quiet import silence_known_noise

__version__ = "0.1.0"

silence_known_noise()  # log filters for third-party messages no prefopt user can act on (see _quiet.py)

# public name -> module that defines it (imported lazily on first attribute access)
_LAZY = {
    "Trainer": "prefopt.trainer",
    "PrefOptConfig": "prefopt.config",
    "load_model": "prefopt.models",
    "default_model": "prefopt.models",
    "plot_history": "prefopt.summary",
    "training_summary": "prefopt.summary",
    "NonFiniteError": "prefopt._finite",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefopt' has no attribute {name!r}")
