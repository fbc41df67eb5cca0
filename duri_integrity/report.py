"""The verification report: a complete account first, a verdict second.

A report is returned for every outcome, including operational failures; it
reads like an object (``r.status``) and like a mapping (``r["status"]``), is
truthy only when the tree is verified, and serialises to JSON.
"""

from collections.abc import Iterator
from typing import Any, Literal

import msgspec

__all__ = [
    "PROBLEM_KINDS",
    "RECOMMENDATIONS",
    "ManifestInfo",
    "Mode",
    "Problem",
    "Report",
    "Status",
    "Tally",
    "make_report",
]

Status = Literal["VERIFIED", "FAILED", "UNTRUSTED", "ERROR"]
Mode = Literal["full", "quick"]
PROBLEM_KINDS = (
    "modified",
    "missing",
    "added",
    "type_changed",
    "mode_changed",
    "symlink_changed",
    "unreadable",
    "unstable",
)
RECOMMENDATIONS: dict[str, str] = {
    "VERIFIED": "proceed",
    "FAILED": "rollback_integrity",
    "UNTRUSTED": "rollback_untrusted",
    "ERROR": "rollback_unverifiable",
}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNTRUSTED, EXIT_ERROR = 0, 1, 2, 3, 4
"""Every exit code the tool uses, in one place (2 is a usage error; 130 an interrupt)."""
EXIT_CODES: dict[str, int] = {
    "VERIFIED": EXIT_OK,
    "FAILED": EXIT_FAILED,
    "UNTRUSTED": EXIT_UNTRUSTED,
    "ERROR": EXIT_ERROR,
}


class Problem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    path: str
    """Relative POSIX path; undecodable bytes appear as backslash escapes."""
    kind: str
    expected: str | None = None
    actual: str | None = None


class ManifestInfo(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    deployment: str
    release: str
    serial: int
    created: str
    expires: str | None
    key_id: str
    root_digest: str
    entries: int


class Report(msgspec.Struct, kw_only=True):
    status: Status
    summary: str
    integrity_verified: bool
    recommendation: str
    reason: str | None
    """Why the manifest was not trusted or the check could not run (None otherwise)."""
    reason_code: str | None
    """The same, machine-readable: "bad_signature", "rollback_refused", "config"... (None when verified)."""
    root: str
    mode: Mode
    """Either "quick" (a stat snapshot let unchanged files go unhashed) or "full"."""
    notes: list[str]
    """Things worth knowing that are not problems (for example why quick mode hashed everything)."""
    manifest: ManifestInfo | None
    counts: dict[str, int]
    problems: list[Problem]
    """In path order; only the first ones when ``problems_truncated`` (``counts`` stay exact)."""
    problems_truncated: bool = False
    elapsed_seconds: float
    checked_at: str
    tool_version: str
    config_file: str | None = None
    """The config file whose settings this run used, if any."""

    # Mapping-style access for deploy scripts: r["status"], "status" in r, r.get(...)
    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.__struct_fields__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__struct_fields__)

    def keys(self) -> tuple[str, ...]:
        return self.__struct_fields__

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__struct_fields__ else default

    def __bool__(self) -> bool:
        return self.integrity_verified

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result

    def to_json(self, *, indent: int = 0) -> str:
        data = msgspec.json.encode(self)
        if indent:
            data = msgspec.json.format(data, indent=indent)
        return data.decode()


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


class Tally:
    """Exact counts from a comparison, however many problems were kept in the list."""

    __slots__ = (
        "added",
        "by_kind",
        "checked",
        "directories",
        "excluded",
        "failed",
        "files",
        "hashed",
        "other",
        "problems",
        "symlinks",
        "total",
        "truncated",
    )

    def __init__(self) -> None:
        self.checked = self.files = self.directories = self.symlinks = self.other = 0
        """Manifest entries found in the tree with the expected type, in all and by type."""
        self.added = 0
        self.excluded = 0
        """Objects in the tree that the manifest's exclusion patterns left out (a directory once)."""
        self.hashed = 0
        self.problems = 0
        self.failed = 0
        """Distinct paths with at least one problem."""
        self.total = 0
        """Manifest entries plus paths found that it does not list: what "N of M" counts."""
        self.by_kind: dict[str, int] = dict.fromkeys(PROBLEM_KINDS, 0)
        self.truncated = False


def make_report(
    *,
    status: Status,
    root: str,
    mode: Mode = "full",
    reason: str | None = None,
    reason_code: str | None = None,
    config_file: str | None = None,
    manifest: ManifestInfo | None = None,
    problems: list[Problem] | None = None,
    tally: Tally | None = None,
    notes: list[str] | None = None,
    elapsed: float = 0.0,
    checked_at: str = "",
    tool_version: str = "",
) -> Report:
    """Assemble a report and its one-line summary.

    ``problems`` must be in path order (the comparison sorts them) and ``tally``
    holds the exact counts. A VERIFIED report with problems, or a FAILED one
    without, is a bug in the caller and raises ValueError.
    """
    problems = problems or []
    t = tally or Tally()
    if status == "VERIFIED" and (problems or t.problems):
        raise ValueError("programming error: a VERIFIED report cannot have problems")
    if status == "FAILED" and not (problems and t.problems):
        raise ValueError("programming error: a FAILED report needs at least one problem")
    return Report(
        status=status,
        summary=_summary(status, t, mode, reason),
        integrity_verified=status == "VERIFIED",
        recommendation=RECOMMENDATIONS[status],
        reason=reason,
        reason_code=reason_code if reason_code is not None else ("tree_differs" if status == "FAILED" else None),
        root=root,
        mode=mode,
        notes=list(notes or ()),
        manifest=manifest,
        counts=_counts(t, manifest.entries if manifest else 0),
        problems=problems,
        problems_truncated=t.truncated,
        elapsed_seconds=round(elapsed, 6),
        checked_at=checked_at,
        tool_version=tool_version,
        config_file=config_file,
    )


def _counts(t: Tally, entries: int) -> dict[str, int]:
    counts = {
        "entries": entries,
        "checked": t.checked,
        "files": t.files,
        "directories": t.directories,
        "symlinks": t.symlinks,
        "other": t.other,
        "excluded": t.excluded,
        "hashed": t.hashed,
        "problems": t.problems,
        "failed": t.failed,
        "total": t.total,
    }
    counts.update(t.by_kind)
    return counts


def _summary(status: Status, t: Tally, mode: Mode, reason: str | None) -> str:
    """The report's one line: what was verified, what failed, or why it could not be checked."""
    if status == "VERIFIED":
        return f"{_plural(t.files, 'file')} verified" + (" (quick mode)" if mode == "quick" else "")
    if status == "FAILED":
        detail = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in t.by_kind.items() if n)
        entries = "entry" if t.total == 1 else "entries"
        return f"{t.failed:,} of {t.total:,} {entries} failed: {detail}"
    if status == "UNTRUSTED":
        return f"manifest not trusted: {reason}"
    return f"could not verify: {reason}"
