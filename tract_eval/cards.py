"""Where the user-editable cards live: judge/benchmark YAML, prompt and report templates, recipes."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputNotFoundError

_PACKAGE = Path(__file__).resolve().parent


def cards_root() -> Path:
    """The folder holding ``judges/``, ``benchmarks/``, ``training/`` and ``reports/``.

    A source checkout or editable install uses the repository's top-level
    folders; a wheel carries copies under ``tract_eval/_cards``.
    ``TRACT_EVAL_CARDS`` points elsewhere.
    """
    override = os.environ.get("TRACT_EVAL_CARDS")
    if override:
        return Path(override)
    for candidate in (_PACKAGE / "_cards", _PACKAGE.parent):
        if (candidate / "judges").is_dir():
            return candidate
    raise InputNotFoundError(
        f"cannot find the judge cards next to {_PACKAGE}; set TRACT_EVAL_CARDS to the folder holding judges/"
    )


def card_dir(kind: str) -> Path:
    return cards_root() / kind


def find_card(kind: str, name_or_path: str, what: str) -> Path:
    """A built-in card by name (``<kind>/<name>.yaml``) or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = card_dir(kind) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputNotFoundError(f"no {what} {name_or_path!r} (looked for {path})")
    return path
