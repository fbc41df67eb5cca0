"""The rollback state store: where marks live, how they are read, recorded and locked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from duri_integrity import state
from duri_integrity.errors import ConfigError, RollbackRefused
from duri_integrity.state import StateStore


def _record(store: StateStore, serial: int, digest: str = "a" * 64, *, approved: bool = False) -> None:
    store.record("svc", serial=serial, release=f"v{serial}", root_digest=digest, key_id="KEY", approved=approved)


_STATE_DIR_AS = """
import os, sys
from duri_integrity import state
if os.geteuid() == 0 and sys.argv[1] != "root":
    os.seteuid(65534)  # really not root from here on (a root test run drops to nobody)
print(state.default_state_dir())
"""


def _default_state_dir(who: str, env: dict[str, str]) -> str:
    """default_state_dir() in a fresh process, as root or (if we are root) really as another user."""
    full = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "HOME")} | env
    done = subprocess.run(
        [sys.executable, "-c", _STATE_DIR_AS, who], capture_output=True, text=True, env=full, timeout=60, check=True
    )
    return done.stdout.strip()


def test_default_state_dir_follows_the_user(tmp_path: Path) -> None:
    """root keeps marks in /var/lib/duri-integrity; anyone else under XDG_STATE_HOME, else ~/.local/state."""
    xdg, home = str(tmp_path / "xdg"), str(tmp_path / "home")
    if os.geteuid() == 0:
        assert _default_state_dir("root", {"XDG_STATE_HOME": xdg, "HOME": home}) == "/var/lib/duri-integrity"
    assert _default_state_dir("user", {"XDG_STATE_HOME": xdg, "HOME": home}) == os.path.join(xdg, "duri-integrity")
    assert _default_state_dir("user", {"XDG_STATE_HOME": "", "HOME": home}) == os.path.join(
        home, ".local", "state", "duri-integrity"
    )
    assert _default_state_dir("user", {"HOME": home}) == os.path.join(home, ".local", "state", "duri-integrity")


def test_mark_path_is_per_deployment_and_stable(tmp_path: Path) -> None:
    """Each deployment has its own file, named from a hash of its name, inside the store."""
    store = StateStore(str(tmp_path / "st"))
    a, b = store.path("svc"), store.path("other")
    assert a != b and a == StateStore(str(tmp_path / "st")).path("svc")
    assert os.path.dirname(a) == str(tmp_path / "st") and os.path.basename(a).startswith("rollback-")
    assert len(os.path.basename(a)) == len("rollback-.json") + 32


def test_no_mark_yet_reads_as_none(tmp_path: Path) -> None:
    """A deployment never verified on this host has no mark."""
    store = StateStore(str(tmp_path / "st"))
    store.check()
    assert store.read("svc") is None


def test_first_record_writes_a_private_mark(tmp_path: Path) -> None:
    """The first verified release becomes the mark, in a 0600 file holding exactly what was recorded."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    mark = store.read("svc")
    assert mark is not None
    assert (mark.deployment, mark.serial, mark.release, mark.root_digest, mark.key_id) == (
        "svc",
        100,
        "v100",
        "a" * 64,
        "KEY",
    )
    assert mark.approvals == [] and mark.updated > 0
    assert os.stat(store.path("svc")).st_mode & 0o777 == 0o600
    assert StateStore(str(tmp_path / "st")).read("other") is None


def test_newer_release_raises_the_mark_and_same_release_changes_nothing(tmp_path: Path) -> None:
    """A newer serial replaces the mark; the same serial and root leave the file untouched."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    _record(store, 200)
    path = store.path("svc")
    before = os.stat(path).st_ino
    _record(store, 200)
    assert os.stat(path).st_ino == before
    with pytest.raises(RollbackRefused, match="share a serial"):  # same serial, other content: refused
        _record(store, 200, digest="b" * 64)
    mark = store.read("svc")
    assert mark is not None and mark.serial == 200 and mark.root_digest == "a" * 64
    assert os.stat(path).st_ino == before


def test_recording_an_older_release_without_approval_is_refused(tmp_path: Path) -> None:
    """If another run recorded a newer release meanwhile, this older one is refused and the mark kept."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 200)
    with pytest.raises(RollbackRefused, match="recorded on this host by another run"):
        _record(store, 199)
    mark = store.read("svc")
    assert mark is not None and mark.serial == 200


def test_approved_rollback_pins_without_lowering_and_keeps_fifty_approvals(tmp_path: Path) -> None:
    """Each approved rollback pins that release (the mark stays) and is recorded; only the latest 50 are kept."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 1000)
    for n in range(52):
        _record(store, 999 - n, approved=True)
    mark = store.read("svc")
    assert mark is not None and mark.serial == 1000 and mark.approved_serial == 999 - 51
    assert len(mark.approvals) == 50
    last = mark.approvals[-1]
    assert (last.serial, last.release, last.previous_serial, last.previous_release) == (948, "v948", 1000, "v1000")
    assert mark.approvals[0].serial == 997 and last.at > 0
    with pytest.raises(RollbackRefused):  # only the pinned release passes unapproved, not the ones before it
        _record(store, 999)
    _record(store, 948)  # the pinned one restarts: nothing changes
    _record(store, 1000)  # back at the newest: the pin is spent
    mark = store.read("svc")
    assert mark is not None and mark.approved_serial is None


def test_an_approval_is_recorded_even_for_the_newest_release(tmp_path: Path) -> None:
    """An approval is recorded even when serial and root equal the mark (the approval is the news)."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    _record(store, 100, approved=True)
    mark = store.read("svc")
    assert mark is not None and len(mark.approvals) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is corrupt"),
        (b"[]", "is corrupt"),
        (
            b'{"format":"duri-integrity-state/1","deployment":"svc","serial":1,"release":"","root_digest":"",'
            b'"key_id":"","updated":0}',
            "belongs to another deployment",
        ),
    ],
)
def test_bad_mark_fails_closed(tmp_path: Path, content: bytes, message: str) -> None:
    """A corrupt mark or one in another format is an error, never silently no mark."""
    store = StateStore(str(tmp_path / "st"))
    store.check()
    Path(store.path("svc")).write_bytes(content)
    os.chmod(store.path("svc"), 0o600)
    with pytest.raises(ConfigError, match=message):
        store.read("svc")


def test_mark_of_another_deployment_copied_over_is_refused(tmp_path: Path) -> None:
    """A mark file renamed to another deployment's name is refused (the deployment is inside it)."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    os.rename(store.path("svc"), store.path("other"))
    with pytest.raises(ConfigError, match="belongs to another deployment"):
        store.read("other")


def test_mark_that_is_a_symlink_or_shared_is_refused(tmp_path: Path) -> None:
    """A mark replaced by a symlink, or writable by others, is an error (fail closed)."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    path = store.path("svc")
    data = json.loads(Path(path).read_bytes())
    os.chmod(path, 0o620)
    with pytest.raises(ConfigError, match=r"^rollback state .* is writable by group or others"):
        store.read("svc")
    os.unlink(path)
    (tmp_path / "elsewhere.json").write_text(json.dumps(data))
    os.chmod(tmp_path / "elsewhere.json", 0o600)
    os.symlink(tmp_path / "elsewhere.json", path)
    with pytest.raises(ConfigError, match=r"^cannot read rollback state .*: it is a symbolic link"):
        store.read("svc")


def test_store_in_a_shared_directory_is_refused(tmp_path: Path) -> None:
    """A state directory others can write cannot hold marks: check() says how to fix it."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError, match="--state-dir none"):
        StateStore(str(shared)).check()
    with pytest.raises(ConfigError):
        _record(StateStore(str(shared)), 1)


def test_mark_replaced_by_a_directory_is_an_error(tmp_path: Path) -> None:
    """A directory where the mark should be is an error for record (fail closed), not a fresh start."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 1)
    os.unlink(store.path("svc"))
    os.mkdir(store.path("svc"))
    with pytest.raises(ConfigError, match="is not a regular file"):
        _record(store, 2)
    assert os.path.isdir(store.path("svc"))


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_record_waits_for_another_process_holding_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another process holds the state lock, record gives up after LOCK_TIMEOUT and writes nothing."""
    store = StateStore(str(tmp_path / "st"))
    store.check()
    monkeypatch.setattr(state, "LOCK_TIMEOUT", 0.3)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, os.path.join(store.directory, ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match=r"stayed locked by another run for 0\.3 s"):
            _record(store, 100)
        assert store.read("svc") is None
    finally:
        holder.communicate("\n", timeout=30)
    _record(store, 100)  # the lock released, the same record goes through
    mark = store.read("svc")
    assert mark is not None and mark.serial == 100


def test_concurrent_recorders_are_serialised(tmp_path: Path) -> None:
    """Two recorders at once: the one that waits sees the other's newer mark and refuses its older one."""
    store = StateStore(str(tmp_path / "st"))
    store.check()
    lock_path = os.path.join(store.directory, ".lock")
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run is in the middle of recording
    outcome: list[BaseException | None] = []

    def older() -> None:
        try:
            _record(StateStore(store.directory), 100)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=older)
    waiter.start()
    try:
        waiter.join(0.3)
        assert waiter.is_alive(), "record did not wait for the lock"
        # The run holding the lock records the newer release, then releases the lock.
        Path(store.path("svc")).write_bytes(
            json.dumps(
                {
                    "deployment": "svc",
                    "serial": 200,
                    "release": "v200",
                    "root_digest": "c" * 64,
                    "key_id": "K",
                    "updated": 1,
                }
            ).encode()
        )
        os.chmod(store.path("svc"), 0o600)
    finally:
        os.close(fd)
    waiter.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], RollbackRefused)
    mark = store.read("svc")
    assert mark is not None and mark.serial == 200


def test_marks_are_stored_in_format_2(tmp_path: Path) -> None:
    """The on-disk format is pinned: a mark says duri-integrity-state/2, and such a file from an earlier run reads."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    assert json.loads(Path(store.path("svc")).read_bytes())["format"] == "duri-integrity-state/2"
    earlier = {
        "format": "duri-integrity-state/2",
        "deployment": "svc",
        "serial": 7,
        "release": "v7",
        "root_digest": "d" * 64,
        "key_id": "K",
        "updated": 1,
        "approvals": [],
    }
    Path(store.path("svc")).write_text(json.dumps(earlier))
    mark = store.read("svc")
    assert mark is not None and mark.serial == 7


def test_oversized_mark_is_refused(tmp_path: Path) -> None:
    """A mark file over 1 MiB is an error, read no further (its size is bounded like every file we read)."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    good = Path(store.path("svc")).read_bytes()
    Path(store.path("svc")).write_bytes(good + b" " * ((1 << 20) - len(good)))
    assert store.read("svc") is not None
    Path(store.path("svc")).write_bytes(good + b" " * ((1 << 20) - len(good) + 1))
    with pytest.raises(ConfigError):
        store.read("svc")


_WRITE_FAILS = """
import resource, signal, sys
from duri_integrity.state import StateStore
store = StateStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # every write now fails: EFBIG
try:
    store.record("svc", serial=200, release="v200", root_digest="b" * 64, key_id="K")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_mark_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    """When the new mark cannot be written (a real EFBIG from a file-size limit), record raises, mark kept."""
    store = StateStore(str(tmp_path / "st"))
    _record(store, 100)
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_FAILS, store.directory], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(f"ConfigError rollback state not recorded in {store.directory}: File too large (")
    assert "--state-dir none" in done.stdout
    mark = store.read("svc")
    assert mark is not None and mark.serial == 100
    assert [p.name for p in Path(store.directory).iterdir() if p.name.endswith(".tmp")] == []
