"""BVPO's reasoning traces: a face of `prefopt.methods.bvpo`, where they are defined."""

from prefopt.chat import Thinking, ThinkingTokenizer  # noqa: F401
from prefopt.methods.bvpo.reasoning import AutoAlphaCallback, EmptyTraceField, annotate_views, auto_alpha  # noqa: F401
