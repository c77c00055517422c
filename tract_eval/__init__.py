"""tract-eval: measure, compare and train LLM-as-a-judge models (TRACT and its baselines)."""
from .parsing import parse_score

__version__ = "0.1.0"
__all__ = ["parse_score", "__version__"]
