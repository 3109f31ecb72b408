"""One small registry class and its instances (methods, archs, datasets, attacks, formats, trackers).

Registering a component is one decorator line next to its definition::

    @METHODS.register("afd", "ours")
    class AFD(Method): ...

The first name is the canonical one (the CLI name and the leaderboard row); the others are
aliases. Components are found by importing the modules of their package
(:func:`import_submodules`), so nobody maintains a list. This module imports nothing else from
the package, so every other module can import it.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """A registered component: its canonical name, aliases, the object and where it was defined."""

    name: str
    aliases: tuple
    obj: Any
    description: str
    origin: str
    metadata: Dict[str, Any] = field(default_factory=dict)


def _origin(obj: Any) -> str:
    try:
        file = inspect.getsourcefile(obj) or "<unknown>"
        line = inspect.getsourcelines(obj)[1]
        return f"{file}:{line}"
    except (TypeError, OSError):
        return getattr(obj, "__module__", "<unknown>")


def _first_docstring_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


class Registry:
    """A name → component mapping with aliases, duplicate detection and helpful misses.

    Args:
        kind: what the registry holds, singular ("method"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Entry] = {}
        self._lookup: Dict[str, str] = {}

    def register(self, name: str, *aliases: str, description: Optional[str] = None,
                 **metadata: Any) -> Callable[[T], T]:
        """Decorator that files the decorated object under ``name`` and ``aliases``; ``metadata``
        are facts about the component others read without building it (a dataset's ``preset``).

        Raises:
            ValueError: a name or alias is already taken; the message names both definitions.
        """
        names = (name, *aliases)
        for n in names:
            if n != n.lower() or not n or any(c.isspace() for c in n):
                raise ValueError(f"{self.kind} name {n!r} must be non-empty lowercase without spaces")

        def decorator(obj: T) -> T:
            origin = _origin(obj)
            for n in names:
                if n in self._lookup:
                    previous = self._entries[self._lookup[n]]
                    raise ValueError(
                        f"duplicate {self.kind} name {n!r}: defined at {origin} "
                        f"and already registered by {previous.origin}"
                    )
            entry = Entry(name, tuple(aliases), obj, description or _first_docstring_line(obj), origin, dict(metadata))
            self._entries[name] = entry
            for n in names:
                self._lookup[n] = name
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (a component registered for a while, e.g. by a test)."""
        entry = self._entries.pop(self.canonical(name))
        for n in (entry.name, *entry.aliases):
            self._lookup.pop(n, None)

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases."""
        key = name.strip().lower()
        if key not in self._lookup:
            raise UnknownNameError(self._miss_message(name))
        return self._lookup[key]

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def get(self, name: str) -> Any:
        """The object registered as ``name`` (or an alias). Unknown names raise UnknownNameError."""
        return self.entry(name).obj

    def names(self) -> List[str]:
        """Canonical names, sorted."""
        return sorted(self._entries)

    def entries(self) -> List[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._lookup

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _miss_message(self, name: str) -> str:
        close = difflib.get_close_matches(name.strip().lower(), list(self._lookup), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(self.names()) or "(none registered)"
        return f"unknown {self.kind} {name!r}.{hint} Available: {available}"


def import_submodules(package_name: str) -> None:
    """Import every public module of a package so that its registration decorators run.

    Modules whose name starts with an underscore are skipped. Import errors propagate: a broken
    component should fail loudly, not disappear from the registry.
    """
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


METHODS = Registry("method")
# The method name of the natural pre-trained model's row in every table (a name no method may take).
NATURAL = "natural"
MODELS = Registry("arch")
DATASETS = Registry("dataset")
ATTACKS = Registry("attack")
FORMATS = Registry("output format")
TRACKERS = Registry("tracker")
