"""The files the tool reads for itself are opened non-blocking, must be regular and bounded:
a FIFO, a directory or a huge file in their place is a clear answer, never a hang."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from duri_integrity.errors import IntegrityError
from duri_integrity.files import read_file

from .conftest import Signed, assert_one_clear_line

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize("kind", ["fifo", "directory", "too large", "symlink to a fifo"])
def test_read_file_refuses_what_is_not_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    """read_file answers at once for a FIFO (no writer), a directory, an oversized file, a link to a FIFO."""
    p = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "too large":
        p.write_bytes(b"x" * 101)
    else:
        os.mkfifo(tmp_path / "f")
        p.symlink_to(tmp_path / "f")
    with pytest.raises(IntegrityError, match=r"not a regular file|over the 100-byte limit|Is a directory"):
        read_file(str(p), 100, "thing")


def test_read_file_growing_past_its_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that passes the size check but grows while read is still cut off at the limit."""
    p = tmp_path / "grows"
    p.write_bytes(b"x" * 50)
    real_read = os.read

    def growing_read(fd: int, n: int) -> bytes:
        with open(p, "ab") as f:  # another writer appends between fstat and read
            f.write(b"y" * 100)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", growing_read)
    with pytest.raises(IntegrityError, match="over the 100-byte limit"):
        read_file(str(p), 100, "thing")


def _fifo_in_place(path: Path) -> None:
    if path.is_dir():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("target", ["manifest", "signature", "public key", "revocation list", "config"])
def test_a_fifo_in_place_of_an_input_does_not_hang_verify(
    signed: Signed, tmp_path: Path, run_cli: Run, target: str
) -> None:
    """verify answers at once, with one line and a non-zero exit, when one of its inputs is a FIFO."""
    args = ["verify", str(signed.root), "-p", str(signed.keys.public)]
    if target == "manifest":
        _fifo_in_place(signed.manifest)
    elif target == "signature":
        _fifo_in_place(signed.signature)
    elif target == "public key":
        _fifo_in_place(signed.keys.public)
    elif target == "revocation list":
        os.mkfifo(tmp_path / "revoked.list")
        args += ["--revoked-key", str(tmp_path / "revoked.list")]
    else:
        os.mkfifo(tmp_path / "config.toml")
        args += ["--config", str(tmp_path / "config.toml")]
    r = run_cli(*args)
    assert r.returncode in (3, 4), r
    assert_one_clear_line(r.stderr)
    assert "not a regular file" in r.stderr


def test_a_fifo_in_place_of_rollback_state_is_an_error(signed: Signed, tmp_path: Path, run_cli: Run) -> None:
    """A FIFO where the rollback mark should be is an ERROR (exit 4), not a hang."""
    state = tmp_path / "state"
    assert signed.verify(state_dir=str(state)).status == "VERIFIED"
    _fifo_in_place(next(state.glob("rollback-*.json")))
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--state-dir", str(state))
    assert r.returncode == 4 and "not a regular file" in r.stderr


@pytest.mark.parametrize("target", ["snapshot", "snapshot key"])
def test_a_fifo_in_the_quick_cache_means_hashing_everything(signed: Signed, tmp_path: Path, target: str) -> None:
    """A FIFO in place of the snapshot or its key is ignored with a note; every file is hashed."""
    cache = tmp_path / "cache"
    signed.verify(quick=True, cache_dir=str(cache))
    victim = cache / "snapshot.key" if target == "snapshot key" else next(cache.glob("snapshot-*.bin"))
    _fifo_in_place(victim)
    r = signed.verify(quick=True, cache_dir=str(cache))
    assert r.status == "VERIFIED" and r.mode == "full"


def test_a_fifo_as_password_or_token_file(signed: Signed, tmp_path: Path, run_cli: Run) -> None:
    """A FIFO given as a password file, or as the status token file, is one clear line and exit 4."""
    os.mkfifo(tmp_path / "pw")
    r = run_cli("sign", str(signed.manifest), "-s", str(signed.keys.secret), "--password-file", str(tmp_path / "pw"))
    assert r.returncode == 4 and "not a regular file" in r.stderr
    from duri_integrity.errors import ConfigError
    from duri_integrity.server import load_token

    with pytest.raises(ConfigError, match="not a regular file"):
        load_token(token_file=str(tmp_path / "pw"))
