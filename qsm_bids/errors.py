"""Exceptions for problems with the user's input (data, options, recipes).

Every problem that the user can fix (a missing sidecar field, a truncated file, an
output folder inside the raw dataset, an invalid recipe) raises :class:`QSMInputError`,
whose message is a single line ``"<path>: <problem>"``; the command-line interface prints
it without a traceback.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path


class QSMInputError(Exception):
    """A problem with the input that the user can fix.

    Parameters
    ----------
    path : path-like or None
        The offending file or directory; ``None`` when the problem is not tied to one.
    problem : str
        What is wrong, and where possible how to fix it (one line).

    Attributes
    ----------
    path : pathlib.Path or None
        The offending file or directory.
    problem : str
        The problem description.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self.problem: str = " ".join(str(problem).split())
        super().__init__(self.path, self.problem)

    def __str__(self) -> str:
        if self.path is None:
            return self.problem
        return f"{self.path}: {self.problem}"


class RecipeError(QSMInputError):
    """An invalid recipe (unknown stage or algorithm, bad parameter name, type or value)."""
