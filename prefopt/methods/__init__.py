"""Methods that bring more than a loss: `fdpg` (on-policy trainer and its state), `bvpo` (reasoning traces).

DPO, rDPO, RPO, VPO, INPO and CDR are a loss plus the generic machinery (`prefopt.training`, `prefopt.online`).
"""
