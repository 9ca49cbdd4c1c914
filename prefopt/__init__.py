"""prefopt: preference optimisation for language models.

    from prefopt import Trainer, PrefOptConfig      # drop-in for trl.DPOTrainer / trl.DPOConfig
    from prefopt.losses import get_loss, list_losses, LogProbs, register_loss
    from prefopt.data import load_preferences
    trainer.summary(); prefopt.plot_history(trainer.state.log_history)   # after train(), in a notebook

A face (`prefopt._lazy`): heavy modules (trl, transformers) are imported on first use, so
`import prefopt.losses` stays light.
"""

from prefopt._lazy import lazy_face
from prefopt._quiet import silence_known_noise

__version__ = "0.1.0"

silence_known_noise()  # log filters for third-party messages no prefopt user can act on (see _quiet.py)

_TABLE = {
    "Trainer": "prefopt.training.trainer",
    "PrefOptConfig": "prefopt.config",
    "load_model": "prefopt.models",
    "default_model": "prefopt.models",
    "plot_history": "prefopt.training.summary",
    "training_summary": "prefopt.training.summary",
    "NonFiniteError": "prefopt.training.nonfinite",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = ["__version__", *sorted(_TABLE)]
