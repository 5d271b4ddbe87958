"""PruneVid Kit: training-free visual-token pruning for video LLMs on Hugging Face transformers."""
from .config import PruneVidConfig
from .patch import apply, remove, stats, info, is_patched, STATS_KEYS
from . import merge, prune, methods, state

__version__ = "0.2.0"

__all__ = ["PruneVidConfig", "apply", "remove", "stats", "info", "is_patched", "STATS_KEYS", "merge", "prune",
           "methods", "state", "__version__"]
