"""``python -m tract_eval``: the same as the ``tract-eval`` command."""
import sys

from .cli import main

sys.exit(main())
