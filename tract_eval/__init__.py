"""tract-eval: measure, compare and train LLM-as-a-judge models (TRACT and its baselines).

``grade`` / ``grade_many`` score your own responses; ``evaluate`` runs judges over benchmarks or your
own data files and writes what ``tract-eval run`` writes (see docs/tutorial/python-api.md); ``diagnose``
computes judge diagnostics of stored runs (docs/diagnose.md).
"""
__version__ = "0.1.0"

from .api import Grade, diagnose, evaluate, grade, grade_many  # noqa: E402 - after __version__, which the CLI reads
from .errors import UserError  # noqa: E402
from .judge_config import JudgeOverrides  # noqa: E402
from .parsing import parse_score  # noqa: E402

__all__ = ["Grade", "JudgeOverrides", "UserError", "__version__", "diagnose", "evaluate", "grade", "grade_many", "parse_score"]
