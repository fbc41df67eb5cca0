"""Rollback protection: the highest manifest serial verified per deployment, on this host.

A mark belongs to the deployment a manifest names (signed), not to the path it
was verified at nor the key that signed it: the same service reached through
``current``, ``.`` or ``releases/v1.4.2``, and releases signed by an old and a
new key during a rotation, all share one mark. An older manifest is refused
unless the operator approves that one release; an approved rollback pins that
release (so the restarted old release keeps verifying) without lowering the mark,
so the releases between it and the newest stay refused; it is recorded. Two
different trees may not share a serial.

The state lives outside the tree (default /var/lib/duri-integrity for root,
otherwise the user's state directory), in a directory only this user or root
can write (checked like ssh's StrictModes); files and the lock are opened
without following symlinks. If the state cannot be read or written the run is
an ERROR: protection that silently turns itself off is worse than none.
"""

import errno
import os
import time

import msgspec
from blake3 import blake3

from .errors import ConfigError, IntegrityError, RollbackRefused
from .files import UnreadableFile, check_private_dir, open_private_lock, read_file, replace_file

__all__ = ["LOCK_TIMEOUT", "Approval", "RollbackState", "StateStore", "check_against", "default_state_dir"]

_FORMAT = "duri-integrity-state/2"
LOCK_TIMEOUT = 10.0
"""Seconds to wait for another run holding the state lock before giving up (an ERROR)."""


class Approval(msgspec.Struct, kw_only=True):
    at: int
    """Unix time of the approval."""
    serial: int
    release: str
    previous_serial: int
    previous_release: str


class RollbackState(msgspec.Struct, kw_only=True):
    format: str = _FORMAT
    deployment: str
    serial: int
    release: str
    root_digest: str
    key_id: str
    """The key that signed the newest manifest verified (for the record; marks do not depend on it)."""
    updated: int
    approved_serial: int | None = None
    """The one older release the operator approved and this host now runs (with its root digest);
    cleared once a release at or above ``serial`` verifies again. The mark itself never goes down,
    so an approval cannot re-open the releases between the approved one and the newest."""
    approved_digest: str | None = None
    approvals: list[Approval] = []


_decoder = msgspec.json.Decoder(RollbackState)


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/duri-integrity"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "duri-integrity")


class StateStore:
    """Reads and records high-water marks in one private directory."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)

    def check(self) -> None:
        """Create the directory if need be and make sure no one else can write it; raise ConfigError."""
        try:
            check_private_dir(self.directory, "rollback state directory", create=True)
        except IntegrityError as exc:
            raise ConfigError(f"{exc} (rollback protection cannot work; fix it, or pass --state-dir none)") from None

    def path(self, deployment: str) -> str:
        name = blake3(deployment.encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"rollback-{name}.json")

    def read(self, deployment: str) -> RollbackState | None:
        """The recorded mark, or None if there is none yet. A bad file is an error (fail closed)."""
        path = self.path(deployment)
        try:
            data = read_file(path, 1 << 20, "rollback state", follow_symlinks=False, private=True)
        except UnreadableFile as exc:
            if exc.missing:
                return None
            raise ConfigError(str(exc)) from None
        except IntegrityError as exc:
            raise ConfigError(str(exc)) from None
        try:
            state = _decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise ConfigError(
                f"rollback state {path!r} is corrupt ({exc}); inspect it, or remove it to reset rollback protection"
            ) from None
        if state.format != _FORMAT or state.deployment != deployment:
            raise ConfigError(f"rollback state {path!r} belongs to another deployment")
        return state

    def record(
        self,
        deployment: str,
        *,
        serial: int,
        release: str,
        root_digest: str,
        key_id: str,
        approved: bool = False,
    ) -> None:
        """Record a verified release under the lock: a newer one raises the mark; an approved
        older one becomes the pinned exception (the mark stays where it was).

        Raises RollbackRefused when, meanwhile, another run recorded something that makes
        this release a rollback; ConfigError when the state cannot be written.
        """
        self.check()
        fd = open_private_lock(self.directory)
        try:
            _lock(fd, self.directory)
            current = self.read(deployment)
            if current is not None and not approved:
                check_against(current, serial, root_digest, "recorded on this host by another run meanwhile")
            state = _next_state(current, deployment, serial, release, root_digest, key_id, approved)
            if state is current:
                return  # nothing new to record
            replace_file(self.path(deployment), msgspec.json.encode(state), 0o600)
        except OSError as exc:
            raise ConfigError(
                f"rollback state not recorded in {self.directory}: {exc.strerror or exc} "
                "(rollback protection cannot work; fix it, or pass --state-dir none)"
            ) from None
        finally:
            os.close(fd)  # closing releases the lock


def check_against(
    mark: RollbackState, serial: int, root_digest: str, when: str = "already verified on this host"
) -> None:
    """Refuse ``serial`` unless it is at or above the mark (the same tree, if equal) or the pinned approval."""
    if serial > mark.serial or (mark.approved_serial, mark.approved_digest) == (serial, root_digest):
        return
    if serial == mark.serial:
        if root_digest == mark.root_digest:
            return
        raise RollbackRefused(
            f"serial {serial} was {when} for a different tree (root digest {mark.root_digest[:16]}...); "
            "two releases may not share a serial: rebuild with a higher --serial"
        )
    newest = f"release {mark.release!r} (serial {mark.serial})" if mark.release else f"serial {mark.serial}"
    raise RollbackRefused(f"rollback refused: serial {serial} is older than {newest} {when}")


def _next_state(
    current: RollbackState | None,
    deployment: str,
    serial: int,
    release: str,
    root_digest: str,
    key_id: str,
    approved: bool,
) -> RollbackState:
    now = int(time.time())
    if approved and current is not None:
        approval = Approval(
            at=now, serial=serial, release=release, previous_serial=current.serial, previous_release=current.release
        )
        return msgspec.structs.replace(
            current,
            approved_serial=serial,
            approved_digest=root_digest,
            updated=now,
            approvals=[*current.approvals, approval][-50:],
        )
    if current is not None and serial < current.serial:
        return current  # the pinned approved release, restarted: nothing changes
    if current is not None and (serial, root_digest) == (current.serial, current.root_digest):
        if current.approved_serial is None:
            return current
        # Back at the newest release: the approval has served its purpose.
        return msgspec.structs.replace(current, approved_serial=None, approved_digest=None, updated=now)
    return RollbackState(
        deployment=deployment,
        serial=serial,
        release=release,
        root_digest=root_digest,
        key_id=key_id,
        updated=now,
        approvals=list(current.approvals) if current else [],
    )


def _lock(fd: int, directory: str) -> None:
    """Take the exclusive lock, waiting at most LOCK_TIMEOUT seconds."""
    import fcntl

    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                raise
        if time.monotonic() >= deadline:
            raise ConfigError(f"rollback state in {directory} stayed locked by another run for {LOCK_TIMEOUT:g} s")
        time.sleep(0.01)
