"""clipforge: CLIP, complete, faithful and fast."""

__version__ = "0.1.0"

from clipforge import registry
from clipforge.api import load
from clipforge.factory import create_model
from clipforge.registry import available_models

__all__ = ["available_models", "create_model", "load", "registry"]
