"""What a backend declares about itself, read before it is built (nothing connects or loads).

A backend declares the options it takes as the typed fields of a dataclass, each one score-changing
(the default: it enters the run identity) or session-only (where and how fast requests go: recorded
per session in the manifest, never blocking a resume); whether it loads the weights ``model`` names
(the model's files then enter the run identity) or a server answers; and the checks of its options it
can make before loading anything. The run identity, the unknown-option errors and the command-line
flags of the options (``backends.options``) all read this one declaration.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

from ..redaction import is_secret_name

# judge settings every backend factory receives besides its own options (some reject non-"auto" values)
JUDGE_SETTINGS = ("device", "dtype")


def option(default: Any = None, *, session: bool = False, session_keys: tuple[str, ...] = (),
           model_keys: tuple[str, ...] = (), flag: str | None = None, help: str | None = None) -> Any:
    """A field of a backend's options. ``session``: it cannot change a score. For a mapping option,
    ``session_keys`` are its keys that cannot, and ``model_keys`` the ones the model part of the run
    identity holds. ``flag`` and ``help``: the command-line flag that sets it, if any."""
    return dataclasses.field(default=default, metadata={
        "session": session, "session_keys": frozenset(session_keys), "model_keys": frozenset(model_keys),
        "flag": flag, "help": help})


@dataclass(frozen=True)
class OptionFlag:
    """A backend option's command-line flag."""

    option: str
    flag: str
    kind: type  # what argparse converts the value to
    help: str


@dataclass(frozen=True)
class BackendDeclaration:
    name: str
    options: type  # a dataclass whose fields (made by ``option``) are the options the backend takes
    loads_weights: bool  # loads the weights ``model`` names; False: a server answers for a served model
    check: Callable[[dict], None] | None = None  # (factory options) -> None, raising ConfigError

    def option_names(self) -> list[str]:
        """Every option the backend's factory takes: its own and the judge settings all receive."""
        return sorted({f.name for f in dataclasses.fields(self.options)} | set(JUDGE_SETTINGS))

    def flags(self) -> list[OptionFlag]:
        """The options with a command-line flag, in declaration order; help names the backend."""
        hints = typing.get_type_hints(self.options)
        return [OptionFlag(f.name, f.metadata["flag"], _flag_type(hints[f.name]), f"{self.name}: {f.metadata['help']}")
                for f in dataclasses.fields(self.options) if f.metadata.get("flag")]


def score_options(options: dict[str, Any], declarations: list[BackendDeclaration]) -> dict[str, Any]:
    """The options that can change a score: not the session-only ones, not credentials, and of a mapping
    option only the keys that are neither session-only nor the model's. Each option is as the first of
    ``declarations`` that declares it says (the backend's own first; an option no declaration knows scores)."""
    kept = {}
    for name, value in options.items():
        meta = next((f.metadata for d in declarations for f in dataclasses.fields(d.options) if f.name == name), {})
        if meta.get("session") or is_secret_name(name):
            continue
        left_out = meta.get("session_keys", frozenset()) | meta.get("model_keys", frozenset())
        if left_out and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in left_out and not is_secret_name(k)}
            if not value:
                continue
        kept[name] = value
    return kept


def _flag_type(hint: Any) -> type:
    """``int | None`` -> int: the type a flag's text is converted to."""
    kinds = [h for h in typing.get_args(hint) if h is not type(None)] or [hint]
    return kinds[0]
