"""BVPO's reasoning traces: a face of `prefopt.methods.bvpo`, `prefopt.chat` and `prefopt.training.fields`."""

from prefopt.chat import Thinking, ThinkingTokenizer  # noqa: F401
from prefopt.methods.bvpo.alpha import AutoAlphaCallback, auto_alpha  # noqa: F401
from prefopt.methods.bvpo.annotation import annotate_views  # noqa: F401
from prefopt.training.fields import EmptyTraceField  # noqa: F401
