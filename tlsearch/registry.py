"""Small registries for closed vocabularies: strict registration, helpful lookups."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tlsearch.errors import UserInputError

T = TypeVar("T")


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' Did you mean `x`?' when a candidate is close to `name`, else ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean `{close[0]}`?" if close else ""


class Registry(Generic[T]):
    """Name -> entry. Registering a name twice raises; an unknown name lists the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} `{name}` is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in self._entries)
            raise UserInputError(
                f"unknown {self.kind} `{name}`.{suggest(name, self.names())} Known: {known}."
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
