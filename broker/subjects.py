"""Topic names, subscription patterns and a `SubjectTrie` for `*` / `>` matching (pure).

A name is 1-255 characters: tokens of `[A-Za-z0-9_-]+` joined by `.`. A pattern may also
use `*` (exactly one token) and `>` (one or more tokens, last position only), as in NATS.
The trie's matching cost depends on the depth of the name, not on how many patterns exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Generic, TypeVar

from .errors import InvalidTopic

MAX_NAME_LENGTH = 255
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\Z")
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")

V = TypeVar("V")


def validate_topic(name: object) -> str:
    """Return `name` if it is a valid concrete topic name; raise `InvalidTopic` otherwise."""
    if not isinstance(name, str):
        raise InvalidTopic("a topic name must be a string")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidTopic(f"a topic name has 1 to {MAX_NAME_LENGTH} characters")
    if not _is_name(name):
        if "*" in name or ">" in name:
            raise InvalidTopic(f"cannot publish to a wildcard name: {name!r}")
        raise InvalidTopic(
            f"invalid topic name {name!r}: use tokens of [A-Za-z0-9_-] separated by '.'"
        )
    return name


@lru_cache(maxsize=4096)
def _is_name(name: str) -> bool:
    """Memoized: every publish checks its topic's name (twice over WebSocket), and a hit
    costs a fifth of the regular expression."""
    return _NAME.match(name) is not None


def validate_pattern(pattern: object) -> str:
    """Return `pattern` if it is a valid subscription (name, `*` tokens, final `>`)."""
    if not isinstance(pattern, str):
        raise InvalidTopic("a topic pattern must be a string")
    if not pattern or len(pattern) > MAX_NAME_LENGTH:
        raise InvalidTopic(f"a topic pattern has 1 to {MAX_NAME_LENGTH} characters")
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if index != len(tokens) - 1:
                raise InvalidTopic(f"'>' may only be the last token: {pattern!r}")
            continue
        if _TOKEN.match(token) is None:
            raise InvalidTopic(
                f"invalid topic pattern {pattern!r}: use tokens of [A-Za-z0-9_-], '*' or a "
                "final '>', separated by '.'"
            )
    return pattern


def is_wildcard(pattern: str) -> bool:
    """Whether a (valid) pattern contains `*` or `>` tokens."""
    return any(token in ("*", ">") for token in pattern.split("."))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether the valid `pattern` matches the concrete `name` (the naive reference)."""
    pattern_tokens = pattern.split(".")
    name_tokens = name.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(name_tokens) > index
        if index >= len(name_tokens):
            return False
        if token != "*" and token != name_tokens[index]:
            return False
    return len(name_tokens) == len(pattern_tokens)


class _Node(Generic[V]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.values: dict[str, V] = {}


class SubjectTrie(Generic[V]):
    """Patterns mapped to values, looked up by concrete name, token by token.

    Each pattern holds one value (keyed by the pattern string), so insert replaces.
    Owned by one actor; not safe to share between tasks that mutate it.
    """

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def insert(self, pattern: str, value: V) -> None:
        node = self._root
        for token in pattern.split("."):
            node = node.children.setdefault(token, _Node())
        if pattern not in node.values:
            self._size += 1
        node.values[pattern] = value

    def remove(self, pattern: str) -> V | None:
        """Remove `pattern`; returns its value, or None if it was not there."""
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for token in pattern.split("."):
            child = node.children.get(token)
            if child is None:
                return None
            path.append((node, token))
            node = child
        if pattern not in node.values:
            return None
        value = node.values.pop(pattern)
        self._size -= 1
        for parent, token in reversed(path):
            child = parent.children[token]
            if child.values or child.children:
                break
            del parent.children[token]
        return value

    def get(self, pattern: str) -> V | None:
        node = self._root
        for token in pattern.split("."):
            child = node.children.get(token)
            if child is None:
                return None
            node = child
        return node.values.get(pattern)

    def match(self, name: str) -> Iterator[tuple[str, V]]:
        """Yield `(pattern, value)` for every pattern matching the concrete `name`."""
        tokens = name.split(".")
        last = len(tokens)
        stack: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth == last:
                yield from node.values.items()
                continue
            tail = node.children.get(">")
            if tail is not None:
                yield from tail.values.items()
            star = node.children.get("*")
            if star is not None:
                stack.append((star, depth + 1))
            exact = node.children.get(tokens[depth])
            if exact is not None:
                stack.append((exact, depth + 1))
