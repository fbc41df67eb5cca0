"""gitignore-style exclusion rules."""

from __future__ import annotations

import pytest

from duri_integrity.errors import ConfigError
from duri_integrity.exclude import Excluder, normalize_patterns


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        ("*.pyc", "a.pyc", False, True),
        ("*.pyc", "deep/er/a.pyc", False, True),
        ("*.pyc", "a.py", False, False),
        ("__pycache__/", "pkg/__pycache__", True, True),
        ("__pycache__/", "pkg/__pycache__", False, False),
        ("/build", "build", True, True),
        ("/build", "src/build", True, False),
        ("logs/*.log", "logs/a.log", False, True),
        ("logs/*.log", "x/logs/a.log", False, False),
        ("**/logs", "x/y/logs", True, True),
        ("**/logs", "logs", True, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("a/**", "a/x/y", False, True),
        ("a/**", "a", True, False),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("[ab].txt", "b.txt", False, True),
        ("[!ab].txt", "b.txt", False, False),
        ("[!ab].txt", "c.txt", False, True),
        ("*", "anything/at/all", False, True),
        ("\\#literal", "#literal", False, True),
        ("a*b", "a/b", False, False),
        ("name.with.dots", "x/name.with.dots", False, True),
        ("name.with.dots", "x/nameXwithXdots", False, False),
    ],
)
def test_pattern_semantics(pattern: str, path: str, is_dir: bool, expected: bool) -> None:
    """Each pattern form matches as gitignore documents it."""
    assert Excluder([pattern]).excluded(path, is_dir) is expected


def test_last_matching_rule_wins_and_negation_reincludes() -> None:
    """A later '!' pattern re-includes what an earlier one excluded."""
    ex = Excluder(["*.log", "!keep.log"])
    assert ex.excluded("a.log", False)
    assert not ex.excluded("keep.log", False)
    assert Excluder(["!keep.log", "*.log"]).excluded("keep.log", False)


def test_blank_lines_and_comments_are_dropped() -> None:
    """Blank lines and '#' comments are not rules, and are not stored."""
    assert normalize_patterns(["", "  ", "# note", "*.tmp"]) == ["*.tmp"]
    assert not Excluder(["# only a comment"])


@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "!", "/", "x" * 5000])
def test_invalid_patterns_raise_config_error(bad: str) -> None:
    """Unusable patterns are refused with ConfigError, not silently ignored."""
    with pytest.raises(ConfigError):
        Excluder([bad])
