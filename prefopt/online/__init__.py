"""Online preference data and training: sample from a policy, score the samples, train in rounds.

    from prefopt.online import SamplingConfig, annotate, generate, train_online, FDPGTrainer

One module per role: `sampling` (SamplingConfig, generate), `rewards` (rewards and oracles), `annotation`
(sample -> score -> pair), `ranking` (best and worst under an oracle), `evaluation` (win rates), `run_folder`
(what a resumed run reads back) and `rounds` (the loop: sample -> rank -> fields -> train -> evaluate ->
snapshot). This file is a face: each name is imported on first use from the module defining it (`prefopt._lazy`);
f-DPG's on-policy trainer lives in `prefopt.methods.fdpg`.
"""

from prefopt._lazy import lazy_face

_TABLE = {
    "SamplingConfig": "prefopt.online.sampling",
    "generate": "prefopt.online.sampling",
    "PromptTooLongError": "prefopt.online.sampling",
    "prompt_token_ids": "prefopt.online.sampling",
    "context_length": "prefopt.online.sampling",
    "as_conversation": "prefopt.chat",
    "uses_chat_template": "prefopt.chat",
    "annotate": "prefopt.online.annotation",
    "Annotation": "prefopt.online.annotation",
    "pair_samples": "prefopt.online.annotation",
    "PAIRINGS": "prefopt.online.annotation",
    "rank_samples": "prefopt.online.ranking",
    "compare_samples": "prefopt.online.evaluation",
    "win_outcomes": "prefopt.online.evaluation",
    "OnlineConfig": "prefopt.online.rounds",
    "OnlineResult": "prefopt.online.rounds",
    "train_online": "prefopt.online.rounds",
    "FDPGTrainer": "prefopt.methods.fdpg.trainer",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
