"""Rollback protection: the highest manifest serial verified per (root, signing key).

The state lives outside the tree (default /var/lib/duri-integrity for root,
otherwise the user's state directory). An older manifest is refused unless an
operator approves that release or serial by name; an approved rollback lowers
the mark to it, so the restarted old release keeps verifying, and is recorded.
A refused check never touches the state.
"""

import os
import time

import msgspec
from blake3 import blake3

from .errors import ConfigError
from .files import UnreadableFile, read_file, replace_file

__all__ = ["RollbackState", "StateStore", "default_state_dir"]

_FORMAT = "duri-integrity-state/1"
DISABLED = ("none", "off", "")


class Approval(msgspec.Struct, kw_only=True):
    at: int
    """Unix time of the approval."""
    serial: int
    release: str
    previous_serial: int
    previous_release: str


class RollbackState(msgspec.Struct, kw_only=True):
    format: str = _FORMAT
    root: str
    key_id: str
    serial: int
    release: str
    root_digest: str
    updated: int
    approvals: list[Approval] = []


_decoder = msgspec.json.Decoder(RollbackState)


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/duri-integrity"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "duri-integrity")


class StateStore:
    """Reads and records high-water marks in one directory."""

    def __init__(self, directory: str, *, explicit: bool) -> None:
        self.directory = directory
        self.explicit = explicit
        """An explicitly configured directory must work; the default one may fail with a note."""

    def path(self, root: str, key_id: str) -> str:
        name = blake3(f"{root}\x00{key_id}".encode(errors="surrogateescape")).hexdigest()[:32]
        return os.path.join(self.directory, f"rollback-{name}.json")

    def read(self, root: str, key_id: str) -> RollbackState | None:
        """The recorded mark, or None if there is none yet. A corrupt file is an error (fail closed)."""
        path = self.path(root, key_id)
        try:
            data = read_file(path, 1 << 20, "rollback state", follow_symlinks=False, private=True)
        except UnreadableFile as exc:
            if exc.missing:
                return None
            raise ConfigError(str(exc)) from None
        try:
            state = _decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise ConfigError(
                f"rollback state {path!r} is corrupt ({exc}); inspect it, or remove it to reset rollback protection"
            ) from None
        if state.format != _FORMAT or state.root != root or state.key_id != key_id:
            raise ConfigError(f"rollback state {path!r} belongs to another root or key")
        return state

    def record(
        self,
        root: str,
        key_id: str,
        serial: int,
        release: str,
        root_digest: str,
        *,
        approved_from: RollbackState | None = None,
    ) -> str | None:
        """Raise the mark to ``serial`` (or lower it, for an approved rollback).

        Returns a note when the default directory cannot be written; raises
        ConfigError when an explicitly configured one cannot.
        """
        import fcntl

        path = self.path(root, key_id)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with open(os.path.join(self.directory, ".lock"), "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read(root, key_id)
                if current is not None and current.serial > serial and approved_from is None:
                    return None  # another run recorded a newer release meanwhile; keep it
                approvals = list(current.approvals) if current else []
                if approved_from is not None:
                    approvals.append(
                        Approval(
                            at=int(time.time()),
                            serial=serial,
                            release=release,
                            previous_serial=approved_from.serial,
                            previous_release=approved_from.release,
                        )
                    )
                state = RollbackState(
                    root=root,
                    key_id=key_id,
                    serial=serial,
                    release=release,
                    root_digest=root_digest,
                    updated=int(time.time()),
                    approvals=approvals[-50:],
                )
                replace_file(path, msgspec.json.encode(state), 0o600)
        except OSError as exc:
            message = f"rollback state not recorded in {self.directory}: {exc.strerror or exc}"
            if self.explicit:
                raise ConfigError(message) from None
            return message + " (rollback protection is off until it can be)"
        return None
