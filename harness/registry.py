"""Name -> class registries for methods and suites.

A plugin is one module in a scanned package (``methods/``, ``suites/``) that decorates its class with
``@REGISTRY.register("name", "alias")``, or a third-party package that advertises a module in the
entry-point group (``harness.methods`` / ``harness.suites``). Discovery is lazy: nothing is imported
until a name is looked up, and ``harness`` itself never imports a method or a suite by name.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from harness.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one kind, registered by name with aliases; unknown names get a did-you-mean error."""

    def __init__(self, kind: str, base: type, package: str, group: str) -> None:
        self.kind = kind
        self.base = base
        self.package = package
        self.group = group
        self._classes: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = False

    def register(self, name: str, *aliases: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}")
            for key in (name, *aliases):
                owner = self._aliases.get(key)
                if owner is not None and self._classes[owner] is not cls:
                    raise ValueError(f"{self.kind} name {key!r} is registered twice")
                self._aliases[key] = name
            self._classes[name] = cls
            cls.name = name
            return cls

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        try:
            pkg = importlib.import_module(self.package)
        except ModuleNotFoundError:
            pkg = None
        if pkg is not None:
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                raise UserError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._classes)

    def aliases(self, name: str) -> list[str]:
        self._discover()
        return sorted(a for a, n in self._aliases.items() if n == name and a != name)

    def get(self, name: str) -> type[T]:
        self._discover()
        key = self._aliases.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(self._aliases), n=3)
            hint = f"; did you mean: {', '.join(close)}?" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        return self._classes[key]
