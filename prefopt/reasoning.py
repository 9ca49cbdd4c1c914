"""BVPO's reasoning traces: a face of `prefopt.methods.bvpo`, where they are defined."""

from prefopt.methods.bvpo.reasoning import (  # noqa: F401
    AutoAlphaCallback,
    EmptyTraceField,
    Thinking,
    ThinkingTokenizer,
    annotate_views,
    auto_alpha,
)
