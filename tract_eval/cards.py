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


# Folders of user cards added with ``--cards DIR`` (or ``add_card_dir``): searched before the built-in
# ones, laid out like them (``DIR/judges/*.yaml``, ``DIR/benchmarks/*.yaml``) or flat (``DIR/*.yaml``).
_user_dirs: list[Path] = []


def add_card_dir(path: str | Path) -> None:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InputNotFoundError(f"--cards {path}: no such folder")
    if folder not in _user_dirs:
        _user_dirs.insert(0, folder)


def user_card_dirs() -> list[Path]:
    """The ``--cards`` folders, most recently added first."""
    return list(_user_dirs)


def card_dirs(kind: str) -> list[Path]:
    """Where cards of one kind live, user folders first (a user card shadows a built-in one of the same name)."""
    user = [d / kind if (d / kind).is_dir() else d for d in _user_dirs]
    return user + [card_dir(kind)]


def card_names(kind: str) -> list[str]:
    return sorted({p.stem for d in card_dirs(kind) for p in d.glob("*.yaml")})


def find_card(kind: str, name_or_path: str, what: str) -> Path:
    """A card by name (``<kind>/<name>.yaml`` in a user folder, then built in) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix:
        if not path.is_file():
            raise InputNotFoundError(f"no {what} {name_or_path!r} (looked for {path})")
        return path
    for folder in card_dirs(kind):
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    looked = ", ".join(str(d) for d in card_dirs(kind))
    raise InputNotFoundError(f"no {what} {name_or_path!r} (looked in {looked})")
