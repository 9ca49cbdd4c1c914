"""prefopt: preference optimisation for language models.

The loss registry lives in `prefopt.losses`, dataset adapters in `prefopt.data`.
"""

__version__ = "0.1.0"
