"""Shared fixtures: real trees on disk, real keys, the real console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from duri_integrity.keys import generate_keypair

if TYPE_CHECKING:
    from duri_integrity.report import Report

NON_UTF8_NAME = os.fsdecode(b"caf\xe9-latin1.txt")

# Console-script and other subprocess tests must run the code under test, not whatever copy of
# the package happens to be installed: put this checkout first on the subprocesses' path.
_REPO = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)


def make_tree(root: Path, outside: Path | None = None) -> Path:
    """A tree with the awkward cases: nesting, empty files, Unicode, non-UTF-8, links, exec bits."""
    (root / "app" / "pkg" / "deep" / "er").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text("print('hello')\n")
    (root / "app" / "pkg" / "mod.py").write_text("X = 1\n" * 100)
    (root / "app" / "pkg" / "deep" / "er" / "leaf.txt").write_bytes(b"\x00\x01\x02" * 1000)
    (root / "bin").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "data").mkdir()
    (root / "data" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "naïve-ünïcödé ✓.txt").write_text("unicode name\n")
    (root / "data" / "with space.txt").write_text("space\n")
    (root / "empty-dir").mkdir()
    os.mkdir(os.fsencode(root / "data") + b"/dir-\xff")
    with open(os.fsencode(root / "data") + b"/" + os.fsencode(NON_UTF8_NAME), "wb") as f:
        f.write(b"latin-1 name\n")
    (root / "link-inside").symlink_to("app/main.py")
    (root / "link-dir").symlink_to("app")
    (root / "link-dangling").symlink_to("does/not/exist")
    if outside is not None:
        (root / "link-outside").symlink_to(outside)
    return root


@dataclass
class Keys:
    secret: Path
    public: Path
    key_id: str


@dataclass
class Signed:
    root: Path
    manifest: Path
    signature: Path
    keys: Keys

    def verify(self, **kw: Any) -> Report:  # kw: verify_integrity's keywords, checked by the call
        from duri_integrity import verify_integrity

        kw.setdefault("public_keys", [str(self.keys.public)])
        kw.setdefault("use_config_file", False)
        return verify_integrity(self.root, **kw)


def new_keys(where: Path, name: str = "k") -> Keys:
    where.mkdir(parents=True, exist_ok=True)
    sk, pk = where / f"{name}.key", where / f"{name}.pub"
    kid = generate_keypair(str(sk), str(pk))
    return Keys(sk, pk, kid)


def build_and_sign(root: Path, keys: Keys, **kw: Any) -> Signed:  # kw: release.build_and_sign's
    """Build and sign the tree in place with the library's one release operation."""
    from duri_integrity.release import build_and_sign as release

    kw.setdefault("deployment", "svc")
    done = release(str(root), secret_key=str(keys.secret), **kw)
    return Signed(root, Path(done.manifest_path), Path(str(done.signature_path)), keys)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DURI_INTEGRITY_* from the outside world, and a working directory with no config file."""
    for name in list(os.environ):
        if name.startswith("DURI_INTEGRITY_"):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # The deployment every test tree is built for and every test host runs (tests of the
    # deployment check itself remove or change it).
    monkeypatch.setenv("DURI_INTEGRITY_DEPLOYMENT", "svc")
    # What is installed under /etc on the machine running the tests must not matter.
    monkeypatch.setenv("DURI_INTEGRITY_SYSTEM_DIR", str(tmp_path / "etc"))
    # Rollback state and quick-mode snapshots go to the test's own directories, never the host's.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr("duri_integrity.state.default_state_dir", lambda: str(tmp_path / "state"))
    # Child processes (the console script, serve's verification children) cannot see that patch:
    # as root their default would be the host's /var/lib/duri-integrity.
    monkeypatch.setenv("DURI_INTEGRITY_STATE_DIR", str(tmp_path / "state"))
    # An in-process CLI run may have attached its handler to the package logger: undo that.
    import logging

    pkg = logging.getLogger("duri_integrity")
    monkeypatch.setattr(pkg, "handlers", [logging.NullHandler()])
    monkeypatch.setattr(pkg, "propagate", True)
    monkeypatch.setattr(pkg, "level", logging.NOTSET)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return new_keys(tmp_path / "keys")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the tree\n")
    return make_tree(tmp_path / "tree", outside)


@pytest.fixture
def signed(tree: Path, keys: Keys) -> Signed:
    return build_and_sign(tree, keys, release="v1.0.0", exclude=["*.pyc", "__pycache__/"])


def require_tool(name: str, package: str) -> str:
    """A Debian-packaged tool the test needs: skipped locally if missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (apt-get install {package})")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def minisign_bin() -> str:
    return require_tool("minisign", "minisign")


def console_script() -> str | None:
    """The installed duri-integrity script: beside this interpreter first (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "duri-integrity"
    return str(beside) if beside.exists() else shutil.which("duri-integrity")


# The run_cli fixture: run(*args, env=None, cwd=None, input=None) -> the completed process.
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> Run:
    """Run the installed console script as a real process."""
    exe = console_script()
    if exe is None:
        pytest.fail("the duri-integrity console script is not installed (pip install -e .)")

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")}
        full_env["DURI_INTEGRITY_DEPLOYMENT"] = "svc"
        full_env["DURI_INTEGRITY_SYSTEM_DIR"] = os.environ["DURI_INTEGRITY_SYSTEM_DIR"]
        # A separate process cannot see the in-process patch of the default state directory.
        full_env["DURI_INTEGRITY_STATE_DIR"] = str(Path(os.environ["XDG_STATE_HOME"]) / "duri-integrity")
        full_env.update(env or {})
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, env=full_env, cwd=cwd, input=input, timeout=120, check=False
        )

    return run


def assert_one_clear_line(stderr: str) -> None:
    """Operational failures end in one clear line on stderr and never a traceback."""
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("duri-integrity: "), stderr


def past_the_start(probe: Path) -> None:
    """Return once file timestamps (the kernel's coarse clock) are past the fine clock's now.

    A run began before this call; a change made after it returns carries a ctime after the
    run's start on both clocks (settle.py), so it counts as certainly during the run.
    """
    now, deadline = time.time_ns(), time.monotonic() + 5
    probe.write_bytes(b"")
    while probe.stat().st_ctime_ns <= now:
        assert time.monotonic() < deadline, "the coarse clock did not advance in 5 s"
        probe.chmod(0o600 if probe.stat().st_mode & 0o077 else 0o644)
