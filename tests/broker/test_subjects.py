"""Topic names, subscription patterns and the SubjectTrie, checked against the naive matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import InvalidTopic
from broker.subjects import (
    MAX_NAME_LENGTH,
    SubjectTrie,
    is_wildcard,
    pattern_matches,
    validate_pattern,
    validate_topic,
)

# ---- validate_topic ---------------------------------------------------------------------

VALID_NAMES = [
    "a",
    "orders",
    "orders.eu",
    "a.b.c.d.e",
    "Metrics_cpu-01.host-2",
    "0.1.2",
    "x" * MAX_NAME_LENGTH,
    ".".join(["ab"] * 85),  # 254 characters, many tokens
]

INVALID_NAMES = [
    "",
    "x" * (MAX_NAME_LENGTH + 1),
    ".a",
    "a.",
    "a..b",
    ".",
    "a b",
    " a",
    "a ",
    "a\n",
    "a\tb",
    "caf\u00e9",
    "\u0442\u0435\u043c\u0430",
    "\uff41",  # fullwidth 'a'
    "a/b",
    "a:b",
    "a#b",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_validate_topic_accepts_and_returns_valid_names(name: str) -> None:
    assert validate_topic(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_validate_topic_rejects_malformed_names(name: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(name)


@pytest.mark.parametrize("name", ["*", ">", "a.*", "a.>", "*.b", "a.*.c", "a*", "a>b"])
def test_validate_topic_rejects_wildcards_in_publish_names(name: str) -> None:
    with pytest.raises(InvalidTopic, match="wildcard"):
        validate_topic(name)


@pytest.mark.parametrize("value", [None, 1, b"orders", ["orders"], 1.5])
def test_validate_topic_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidTopic, match="string"):
        validate_topic(value)


def test_invalid_topic_carries_its_stable_code() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic("a..b")
    assert info.value.code == "invalid_topic"
    assert "a..b" in info.value.message


# ---- validate_pattern -------------------------------------------------------------------

VALID_PATTERNS = [
    *VALID_NAMES,
    "*",
    ">",
    "a.*",
    "a.>",
    "*.b",
    "*.*.*",
    "a.*.>",
    "*.>",
    "x" * (MAX_NAME_LENGTH - 2) + ".>",
]

INVALID_PATTERNS = [
    *INVALID_NAMES,
    ">.a",
    "a.>.b",
    "a.>.>",
    ">.>",
    "a*",
    "a.b*",
    "*a.b",
    "a>",
    "a.>b",
    "**",
    "a.*.",
    ".*",
    "a..>",
    "x" * (MAX_NAME_LENGTH - 1) + ".>",  # 257 characters
]


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_validate_pattern_accepts_names_stars_and_a_final_tail(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", INVALID_PATTERNS)
def test_validate_pattern_rejects_malformed_patterns(pattern: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(pattern)


@pytest.mark.parametrize("pattern", [">.a", "a.>.b", "*.>.*"])
def test_validate_pattern_says_the_tail_must_be_last(pattern: str) -> None:
    with pytest.raises(InvalidTopic, match="last"):
        validate_pattern(pattern)


@pytest.mark.parametrize("value", [None, 3, b"a.>", ("a",)])
def test_validate_pattern_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidTopic, match="string"):
        validate_pattern(value)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("a", False), ("a.b", False), ("*", True), ("a.>", True), ("a.*.c", True), ("a*b", False)],
)
def test_is_wildcard_spots_star_and_tail_tokens(pattern: str, expected: bool) -> None:
    assert is_wildcard(pattern) is expected


# ---- pattern_matches (the reference) ----------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.b", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*.b.>", "x.b.y", True),
        ("*.b.>", "x.b", False),
        ("*.b.>", "x.c.y", False),
    ],
)
def test_pattern_matches_follows_star_and_tail_rules(
    pattern: str, name: str, expected: bool
) -> None:
    assert pattern_matches(pattern, name) is expected


# ---- SubjectTrie ------------------------------------------------------------------------

LITERALS = st.sampled_from(["a", "b", "c"])
NAMES = st.lists(LITERALS, min_size=1, max_size=4).map(".".join)


def pattern_of(tokens: list[str], tail: bool) -> str:
    """Literal and `*` tokens, then a final `>` when asked (always when there is nothing else)."""
    return ".".join([*tokens, ">"] if tail or not tokens else tokens)


PATTERNS = st.builds(pattern_of, st.lists(LITERALS | st.just("*"), max_size=4), st.booleans())


@settings(deadline=None)
@given(st.lists(PATTERNS, max_size=12), st.lists(NAMES, min_size=1, max_size=6))
def test_trie_match_returns_exactly_the_patterns_the_reference_matches(
    inserted: list[str], names: list[str]
) -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    for pattern in inserted:
        validate_pattern(pattern)
        trie.insert(pattern, pattern.upper())
    assert len(trie) == len(set(inserted))
    for name in names:
        found = list(trie.match(name))
        assert len(found) == len({pattern for pattern, _ in found}), "a pattern matched twice"
        assert dict(found) == {
            pattern: pattern.upper() for pattern in inserted if pattern_matches(pattern, name)
        }


@settings(deadline=None)
@given(st.lists(PATTERNS, max_size=12), st.data())
def test_trie_remove_forgets_patterns_and_keeps_len_right(
    inserted: list[str], data: st.DataObject
) -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    for index, pattern in enumerate(inserted):
        trie.insert(pattern, index)
    unique = sorted(set(inserted))
    removed = data.draw(st.lists(st.sampled_from(unique), unique=True) if unique else st.just([]))
    for pattern in removed:
        assert trie.remove(pattern) == max(i for i, p in enumerate(inserted) if p == pattern)
        assert trie.remove(pattern) is None
    kept = set(unique) - set(removed)
    assert len(trie) == len(kept)
    for pattern in unique:
        assert (trie.get(pattern) is not None) == (pattern in kept)
    for name in ("a", "a.b", "c.c.c", "a.b.c.a"):
        assert {p for p, _ in trie.match(name)} == {p for p in kept if pattern_matches(p, name)}


def test_trie_insert_replaces_the_value_of_an_existing_pattern() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    trie.insert("a.*", "first")
    trie.insert("a.*", "second")
    assert len(trie) == 1
    assert trie.get("a.*") == "second"
    assert list(trie.match("a.b")) == [("a.*", "second")]


def test_trie_get_returns_none_for_absent_and_prefix_patterns() -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    trie.insert("a.b.c", 1)
    assert trie.get("a.b.c") == 1
    assert trie.get("a.b") is None
    assert trie.get("a.b.c.d") is None
    assert trie.get("x") is None
    assert trie.get("a.*.c") is None


def test_trie_remove_of_an_absent_or_prefix_pattern_changes_nothing() -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    trie.insert("a.b.c", 1)
    assert trie.remove("a.b") is None
    assert trie.remove("a.b.c.d") is None
    assert trie.remove("zzz") is None
    assert len(trie) == 1
    assert trie.get("a.b.c") == 1


def test_trie_remove_prunes_empty_branches_but_keeps_shared_ones() -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    trie.insert("a.b.c", 1)
    trie.insert("a.b", 2)
    trie.insert("a.x.y", 3)
    assert trie.remove("a.b.c") == 1
    assert len(trie) == 2
    root = trie._root
    assert set(root.children["a"].children) == {"b", "x"}
    assert root.children["a"].children["b"].children == {}
    assert trie.remove("a.x.y") == 3
    assert set(root.children["a"].children) == {"b"}
    assert trie.remove("a.b") == 2
    assert len(trie) == 0
    assert root.children == {}
    assert list(trie.match("a.b")) == []


def test_trie_remove_of_a_pattern_holding_none_still_shrinks_the_trie() -> None:
    trie: SubjectTrie[None] = SubjectTrie()
    trie.insert("a.b", None)
    assert len(trie) == 1
    trie.remove("a.b")
    assert len(trie) == 0
    assert trie._root.children == {}
