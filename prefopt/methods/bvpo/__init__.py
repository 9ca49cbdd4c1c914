"""BVPO (Zhu et al. 2025): reasoning traces and their empty-trace view. A face (`prefopt._lazy`).

`annotation` builds the two views' rows; `alpha` estimates their mixing weight every step (``alpha="auto"``). The thinking
format (`prefopt.chat.Thinking`) and the empty-trace field provider (`prefopt.training.fields.EmptyTraceField`)
live where their lowest users can reach them.
"""

from prefopt._lazy import lazy_face

_TABLE = {
    "AutoAlphaCallback": "prefopt.methods.bvpo.alpha",
    "auto_alpha": "prefopt.methods.bvpo.alpha",
    "annotate_views": "prefopt.methods.bvpo.annotation",
    "EmptyTraceField": "prefopt.training.fields",
    "Thinking": "prefopt.chat",
    "ThinkingTokenizer": "prefopt.chat",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
