"""Exclusion rules: a documented subset of gitignore pattern syntax.

The rules are stored inside the signed manifest, so whoever can write to the
tree cannot widen them; the verifier applies exactly the manifest's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .errors import ConfigError

__all__ = ["Excluder", "normalize_patterns"]

_MAX_PATTERN_LEN = 4096


def _translate_glob(glob: str) -> str:  # noqa: C901, PLR0912 - one branch per token of glob syntax, read left to right
    """Turn one gitignore glob (already stripped of '!', anchors and trailing '/') into a regex."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                before_ok = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2 : i + 3]
                if before_ok and after == "/":
                    out.append("(?:[^/]*/)*")  # '**/' : zero or more whole directories
                    i += 3
                    continue
                if before_ok and i + 2 == n:
                    out.append(".*")  # trailing '/**' : everything inside
                    i += 2
                    continue
            out.append("[^/]*")
            while i < n and glob[i] == "*":
                i += 1
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # an unclosed '[' is a literal, as in git
            else:
                body = glob[i + 1 : j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def normalize_patterns(patterns: Iterable[str]) -> list[str]:
    """Validate patterns and drop blanks and comments, keeping order (it matters for '!')."""
    result: list[str] = []
    for raw in patterns:
        if not isinstance(raw, str):
            raise ConfigError(f"exclude pattern must be a string, got {type(raw).__name__}")
        pattern = raw.rstrip("\n")
        if not pattern.strip() or pattern.startswith("#"):
            continue
        if "\x00" in pattern or "\n" in pattern or len(pattern) > _MAX_PATTERN_LEN:
            raise ConfigError(f"invalid exclude pattern: {raw!r}")
        try:
            pattern.encode("utf-8")  # it is stored in the (UTF-8, JSON) manifest
        except UnicodeEncodeError:
            raise ConfigError(f"exclude pattern {raw!r} is not valid UTF-8") from None
        result.append(pattern)
    return result


class _Rule:
    __slots__ = ("dir_only", "negate", "regex")

    def __init__(self, pattern: str) -> None:
        self.negate = pattern.startswith("!")
        if self.negate or pattern.startswith("\\!") or pattern.startswith("\\#"):
            pattern = pattern[1:]
        pattern = pattern.rstrip(" ")
        self.dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if not pattern:
            raise ConfigError("exclude pattern matches nothing: it is empty after '!' or '/'")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        body = _translate_glob(pattern)
        prefix = "" if anchored else "(?:.*/)?"
        try:
            self.regex = re.compile(prefix + body + r"\Z", re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"invalid exclude pattern {pattern!r}: {exc}") from None


class Excluder:
    """Decides whether a relative POSIX path is excluded. Last matching rule wins."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = normalize_patterns(patterns)
        self._rules = [_Rule(p) for p in self.patterns]
        self._rules.reverse()

    def __bool__(self) -> bool:
        return bool(self._rules)

    def excluded(self, path: str, is_dir: bool) -> bool:
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(path):
                return not rule.negate
        return False
