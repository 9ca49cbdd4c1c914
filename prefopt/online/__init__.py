"""prefopt's online half: loops that sample from the policy, rank with a preference oracle and train.

    from prefopt.online import OnlineConfig, train_online     # INPO rounds, online VPO, iterative DPO
"""

from prefopt.online.rounds import OnlineConfig, OnlineResult, train_online

__all__ = ["OnlineConfig", "OnlineResult", "train_online"]
