"""Where prefopt keeps what it computes once and reuses: converted models, reference log-probs."""

import os
from pathlib import Path


def cache_root() -> Path:
    """``$PREFOPT_CACHE``, or ``~/.cache/prefopt``."""
    return Path(os.environ.get("PREFOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefopt"))
