"""Offline training: `Trainer` (TRL's hooks, each handing off to a collaborator of this package).

A face (`prefopt._lazy`): names resolve to the module defining them on first use.
"""

from prefopt._lazy import lazy_face

_TABLE = {
    "Trainer": "prefopt.training.trainer",
    "FieldProvider": "prefopt.training.fields",
    "NonFiniteError": "prefopt.training.nonfinite",
    "training_summary": "prefopt.training.summary",
    "plot_history": "prefopt.training.summary",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
