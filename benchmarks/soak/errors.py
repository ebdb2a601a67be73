"""How the soak keeps the errors it meets: the first ten, not every one (a list of notes, or
a `Counter` of kinds), so a broken run reports briefly."""

from __future__ import annotations

from collections import Counter


def _note(errors: list[str], what: str) -> None:
    if len(errors) < 10:
        errors.append(what)


def _count(errors: Counter[str], what: str) -> None:
    if what in errors or len(errors) < 10:
        errors[what] += 1
