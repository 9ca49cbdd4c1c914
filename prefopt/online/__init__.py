"""Online preference data and training: sample from a policy, score the samples, train in rounds.

    from prefopt.online import annotate, generate, train_online, FDPGTrainer

A face: each name is defined in one module of this package (or, for `FDPGTrainer`, in `prefopt.methods.fdpg`)
and imported on first use (`prefopt._lazy`).
"""

from prefopt._lazy import lazy_face

_TABLE = {
    "generate": "prefopt.online.sampling",
    "PromptTooLongError": "prefopt.online.sampling",
    "as_conversation": "prefopt.chat",
    "uses_chat_template": "prefopt.chat",
    "prompt_token_ids": "prefopt.online.sampling",
    "context_length": "prefopt.online.sampling",
    "annotate": "prefopt.online.sampling",
    "Annotation": "prefopt.online.sampling",
    "pair_samples": "prefopt.online.sampling",
    "PAIRINGS": "prefopt.online.sampling",
    "OnlineConfig": "prefopt.online.rounds",
    "OnlineResult": "prefopt.online.rounds",
    "train_online": "prefopt.online.rounds",
    "FDPGTrainer": "prefopt.methods.fdpg.trainer",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
