"""BVPO (Zhu et al. 2025): reasoning traces and their empty-trace view. A face (`prefopt._lazy`)."""

from prefopt._lazy import lazy_face

_TABLE = {
    "AutoAlphaCallback": "prefopt.methods.bvpo.reasoning",
    "auto_alpha": "prefopt.methods.bvpo.reasoning",
    "annotate_views": "prefopt.methods.bvpo.reasoning",
    "EmptyTraceField": "prefopt.methods.bvpo.reasoning",
    "Thinking": "prefopt.chat",
    "ThinkingTokenizer": "prefopt.chat",
}
__getattr__, __dir__ = lazy_face(__name__, _TABLE)
__all__ = sorted(_TABLE)
