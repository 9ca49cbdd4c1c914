"""Rewards and preference oracles: a face of `prefopt.online.rewards`, where they are defined."""

from prefopt.online.rewards import (  # noqa: F401
    BradleyTerryOracle,
    DensityRatioReward,
    FunctionReward,
    JudgeOracle,
    RewardModel,
)
