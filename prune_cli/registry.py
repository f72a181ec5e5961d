"""A small name -> object registry, used for models, datasets, methods and scores.

Entries are registered where they are defined, with a decorator (the timm pattern)::

    @DATA_IDS.register("folder")
    def folder_identity(root: str) -> str | None: ...

An unknown name raises a ``UserError`` that lists the valid names, so the command line can print
one line and exit with status 2.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prune_cli.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (builders, classes). ``kind`` names the registry in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries))
            raise UserError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_submodules(package_name: str) -> None:
    """Import every module of a package, so that their ``register`` decorators run.

    Adding a model, dataset or method is then one new file: nothing else lists it.
    """
    import importlib
    import pkgutil

    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
