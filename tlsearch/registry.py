"""Small registries for closed vocabularies: strict registration, helpful lookups."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tlsearch.errors import UserInputError

T = TypeVar("T")


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' Did you mean `x`?' when a candidate is close to `name` (a typo: a few letters added, dropped,
    changed or swapped; an abbreviation, `attn`; or mostly the same letters in order), else ''."""
    typos = [c for c in candidates if _edits(name.lower(), c.lower()) <= max(1, len(name) // 4)]
    short = [c for c in candidates if len(name) >= 3 and _abbreviates(name.lower(), c.lower())]
    close = typos or short or difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    best = min(close, key=lambda c: _edits(name.lower(), c.lower())) if close else None
    return f" Did you mean `{best}`?" if best else ""


def _abbreviates(short: str, name: str) -> bool:
    """`short`'s letters appear in `name` in order, starting with its first (`attn`, `attention`)."""
    letters = iter(name)
    return short[:1] == name[:1] and all(letter in letters for letter in short)


def _edits(a: str, b: str) -> int:
    """Letters to insert, delete, substitute or swap (adjacent) to turn `a` into `b`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


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
