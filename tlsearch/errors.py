"""One root exception; every error a user can fix derives from it (and maps to exit code 2)."""

from __future__ import annotations


class TLSearchError(Exception):
    """Base class of tlsearch's own errors."""


class UserInputError(TLSearchError):
    """Bad input the user can fix (spec, paths, model names, run directories). Exit code 2."""


class SpecError(UserInputError):
    """A spec failed validation; carries every problem found, each with its YAML path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"{where}{len(problems)} {noun}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))
