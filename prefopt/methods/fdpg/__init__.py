"""f-DPG (Go et al. 2023): on-policy training towards a target distribution. A face (`prefopt._lazy`)."""

from prefopt._lazy import lazy_face

_TABLE = {
    "FDPGTrainer": "prefopt.methods.fdpg.trainer",
    "FDPGState": "prefopt.methods.fdpg.state",
    "LogPartitionEstimate": "prefopt.methods.fdpg.state",
    "distinct_n": "prefopt.methods.fdpg.trainer",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
