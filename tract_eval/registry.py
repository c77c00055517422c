"""A small typed registry, filled by decorators and by entry-point plugins."""
from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class PluginWarning(UserWarning):
    """An entry-point plugin failed to load; it is skipped and everything else works."""


class Registry(Generic[T]):
    """Maps names to factories of ``T``; plugins come from an entry-point group."""

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 check: Callable[[object], str | None] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.check = check  # a loaded plugin -> why it is not a usable T (None: it is)
        self._items: dict[str, T] = {}
        self.broken: dict[str, str] = {}  # plugin name -> why it failed to load (warned once)
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self.entry_point_group:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            try:
                loaded = ep.load()
                problem = self.check(loaded) if self.check else None
            except KeyboardInterrupt:  # the user's, not the plugin's
                raise
            # any error in third-party code, even sys.exit() at import (SystemExit): the built-ins still work
            except BaseException as exc:  # noqa: BLE001
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                message = (f"{self.kind} plugin {ep.name!r} ({ep.value}) from entry-point group "
                           f"{self.entry_point_group!r} failed to load and is skipped: {problem}")
                self.broken[ep.name] = message
                warnings.warn(message, PluginWarning, stacklevel=2)
            else:
                self._items[ep.name] = loaded

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            if name in self.broken:
                raise UnknownNameError(self.broken[name]) from None
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items
