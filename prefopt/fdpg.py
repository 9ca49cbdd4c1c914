"""f-DPG's on-policy trainer: a face of `prefopt.methods.fdpg`, where it is defined."""

from prefopt.methods.fdpg.trainer import FDPGState, FDPGTrainer, LogPartitionEstimate, distinct_n  # noqa: F401
