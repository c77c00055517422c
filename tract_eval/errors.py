"""The one family of user errors: mistakes a person can fix (a flag, a card, a data file, a model name).

``tract-eval`` prints any :class:`UserError` as one or two lines and exits with status 2 (``-v`` adds
the traceback); anything else is a bug and keeps its traceback. Raise the most specific subclass;
each also derives from the matching built-in (``ValueError``, ``KeyError``, ...) so ``except
ValueError`` around library calls keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: the message names what is wrong and where (file, row, field, flag)."""


class ConfigError(UserError, ValueError):
    """A setting is invalid: a flag value, a judge or benchmark card field, a config combination."""


class UnknownNameError(UserError, KeyError):
    """A name (judge, benchmark, backend, metric...) that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0]) if self.args else ""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""

    def __str__(self) -> str:  # FileNotFoundError's str() is "[Errno ...]"-shaped only with errno args
        return str(self.args[0]) if self.args else ""


class ServerError(UserError, RuntimeError):
    """A server the user pointed at (``--base-url``) cannot be reached, or keeps failing after the retries;
    the message names its URL (credentials redacted) and what happened."""


__all__ = ["ConfigError", "InputNotFoundError", "ServerError", "UnknownNameError", "UserError"]
