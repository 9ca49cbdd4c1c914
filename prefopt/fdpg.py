"""f-DPG's on-policy trainer: a face of `prefopt.methods.fdpg`, where it is defined."""

from prefopt.methods.fdpg.state import FDPGState, LogPartitionEstimate  # noqa: F401
from prefopt.methods.fdpg.trainer import FDPGTrainer, distinct_n  # noqa: F401
