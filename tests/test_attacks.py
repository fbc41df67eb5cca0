"""Attacks on the trust boundary, each tried as an attacker who can write the deployed tree
(or the directory a deploy script runs in) would. Every one must end non-VERIFIED."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest

from .conftest import Keys, Signed, build_and_sign, make_tree, new_keys

Run = Callable[..., subprocess.CompletedProcess[str]]


def _backdoor(root: Path) -> None:
    (root / "app" / "backdoor.py").write_text("import os; os.system('id')\n")


@pytest.mark.parametrize(
    "planted",
    [
        'root = "pristine"',
        'state_dir = "none"',
        "public_key = ['ATTACKER']",
        'allow_rollback_to = "v1"',
    ],
)
@pytest.mark.parametrize("name", ["duri-integrity.toml", "pyproject.toml"])
def test_config_planted_in_the_working_directory_is_ignored(
    signed: Signed, keys: Keys, run_cli: Run, tmp_path: Path, planted: str, name: str
) -> None:
    """A config file in the cwd (inside the release) never steers verify: the backdoor is found."""
    pristine = signed.root / "pristine"
    shutil.copytree(signed.root, pristine, symlinks=True, ignore=shutil.ignore_patterns("pristine"))
    attacker = new_keys(tmp_path / "attacker", "a")
    text = planted.replace("ATTACKER", attacker.public.read_text().splitlines()[1])
    if name == "pyproject.toml":
        text = "[tool.duri-integrity]\n" + text
    (signed.root / name).write_text(text + "\n")
    _backdoor(signed.root)
    # A service (or deploy script) running with its cwd at the release root, with and without ROOT.
    for root in ([], ["."], [str(signed.root)]):
        r = run_cli("verify", *root, "-p", str(keys.public), "--json", cwd=signed.root)
        report = json.loads(r.stdout)
        assert r.returncode == 1 and report["config_file"] is None, report["summary"]
        assert any(p["path"] == "app/backdoor.py" for p in report["problems"])


def test_inline_key_is_never_read_as_a_path(signed: Signed, keys: Keys, run_cli: Run, tmp_path: Path) -> None:
    """A file named like the trusted key's base64 line, planted in the cwd, does not replace the key."""
    attacker = new_keys(tmp_path / "attacker", "a")
    build_and_sign(signed.root, attacker, release="evil")  # the tree now carries an attacker-signed manifest
    line = keys.public.read_text().splitlines()[1]
    cwd = tmp_path / "cwd-with-plant"
    cwd.mkdir()
    (cwd / line).parent.mkdir(parents=True, exist_ok=True)  # base64 may hold "/": plant directories too
    shutil.copy(attacker.public, cwd / line)
    r = run_cli("verify", str(signed.root), "-p", line, cwd=cwd)
    assert r.returncode == 3 and "not a trusted key" in r.stderr
    os.chdir(cwd)
    assert verify_integrity(signed.root, public_keys=line).status == "UNTRUSTED"


def _two_releases(tmp_path: Path, keys: Keys, deployment: str = "svc") -> Path:
    releases = tmp_path / "releases"
    for name, serial in (("v1", 100), ("v2", 200)):
        build_and_sign(make_tree(releases / name), keys, release=name, serial=serial, deployment=deployment)
    return releases


def test_rollback_marks_do_not_depend_on_how_the_root_is_spelled(tmp_path: Path, keys: Keys) -> None:
    """After v2 verified through ``current``, v1 is refused as ``.``, as its own directory, or by path."""
    releases = _two_releases(tmp_path, keys)
    current = tmp_path / "current"
    current.symlink_to(releases / "v2")
    state = str(tmp_path / "state")
    assert verify_integrity(current, public_keys=str(keys.public), state_dir=state).status == "VERIFIED"
    os.chdir(releases / "v1")
    for root in (None, ".", str(releases / "v1"), str(releases / "v2" / ".." / "v1")):
        r = verify_integrity(root, public_keys=str(keys.public), state_dir=state)
        assert r.status == "UNTRUSTED" and r.reason_code == "rollback_refused", (root, r.summary)


def test_per_release_directories_are_protected(tmp_path: Path, keys: Keys) -> None:
    """releases/v2 then releases/v1 (the README's own layout) is a refused rollback."""
    releases = _two_releases(tmp_path, keys)
    state = str(tmp_path / "state")
    assert verify_integrity(releases / "v2", public_keys=str(keys.public), state_dir=state).status == "VERIFIED"
    r = verify_integrity(releases / "v1", public_keys=str(keys.public), state_dir=state)
    assert r.status == "UNTRUSTED" and r.reason_code == "rollback_refused"


def test_an_old_key_cannot_replay_during_rotation(tmp_path: Path, keys: Keys) -> None:
    """With old and new keys both trusted, an old-key release older than a new-key one is refused."""
    releases = _two_releases(tmp_path, keys)
    new = new_keys(tmp_path / "new", "n")
    v3 = build_and_sign(make_tree(releases / "v3"), new, release="v3", serial=300)
    both, state = [str(keys.public), str(new.public)], str(tmp_path / "state")
    assert verify_integrity(v3.root, public_keys=both, state_dir=state).status == "VERIFIED"
    r = verify_integrity(releases / "v2", public_keys=both, state_dir=state)
    assert r.status == "UNTRUSTED" and r.reason_code == "rollback_refused"


def test_another_services_release_is_refused(tmp_path: Path, keys: Keys) -> None:
    """A newer release of another deployment, signed by the same key, swapped in whole, is refused."""
    other = build_and_sign(make_tree(tmp_path / "billing"), keys, release="b9", serial=999, deployment="billing")
    r = verify_integrity(other.root, public_keys=str(keys.public), state_dir=str(tmp_path / "state"))
    assert r.status == "UNTRUSTED" and r.reason_code == "wrong_deployment"
    assert "for deployment 'billing', but this host runs 'svc'" in r.summary


def test_a_host_that_names_no_deployment_cannot_verify(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a deployment, rollback protection has nothing to key on: ERROR, unless it is off."""
    monkeypatch.delenv("DURI_INTEGRITY_DEPLOYMENT")
    r = signed.verify()
    assert r.status == "ERROR" and "--deployment" in r.summary
    assert signed.verify(state_dir="none").status == "VERIFIED"


@pytest.mark.parametrize("problem", ["unwritable", "world-writable", "other owner", "lock symlink", "state symlink"])
def test_unusable_rollback_state_fails_closed(signed: Signed, tmp_path: Path, run_cli: Run, problem: str) -> None:
    """State that cannot be written, or that others could write, is an ERROR (exit 4), even with -q."""
    state = tmp_path / "state"
    elsewhere = tmp_path / "elsewhere"
    if problem == "unwritable":
        (tmp_path / "blocker").write_text("x")
        state = tmp_path / "blocker" / "state"
    elif problem in ("world-writable", "other owner"):
        state.mkdir()
        state.chmod(0o777) if problem == "world-writable" else os.chown(state, 65534, 65534)
    else:
        state.mkdir(mode=0o700)
        signed.verify(state_dir=str(state))
        victim = state / ".lock" if problem == "lock symlink" else next(state.glob("rollback-*.json"))
        victim.unlink()
        victim.symlink_to(elsewhere)
    r = run_cli("verify", "-q", str(signed.root), "-p", str(signed.keys.public), "--state-dir", str(state))
    assert r.returncode == 4 and "duri-integrity:" in r.stderr and r.stdout == ""
    assert not elsewhere.exists()


@pytest.mark.parametrize("name", ["leaked-key", "REVOKED.TXT", "old.pub.bak"])
def test_every_file_in_a_revocation_directory_counts(signed: Signed, tmp_path: Path, name: str) -> None:
    """A revoked key is revoked whatever its file is called; an unparseable file is an ERROR."""
    rev = tmp_path / "revoked.d"
    rev.mkdir()
    if name == "REVOKED.TXT":
        (rev / name).write_text(signed.keys.key_id + "\n")
    else:
        shutil.copy(signed.keys.public, rev / name)
    r = signed.verify(revoked_keys=str(rev))
    assert r.status == "UNTRUSTED" and r.reason_code == "revoked_key"
    (rev / "notes.md").write_text("# keys we revoked\nsee ticket 42\n")
    r = signed.verify(revoked_keys=str(rev))
    assert r.status == "ERROR" and "notes.md" in r.summary


@pytest.mark.parametrize("via", ["symlinked file", "symlinked directory", "link in a key directory"])
def test_trust_anchors_resolving_into_the_tree_are_refused(signed: Signed, tmp_path: Path, via: str) -> None:
    """A trusted key or key directory that resolves inside the tree is refused, however it is reached."""
    inside = signed.root / "data" / "keys"
    inside.mkdir()
    shutil.copy(signed.keys.public, inside / "k.pub")
    outside = tmp_path / "trusted.d"
    if via == "symlinked file":
        outside.mkdir()
        (outside / "k.pub").symlink_to(inside / "k.pub")
        source = str(outside / "k.pub")
    elif via == "symlinked directory":
        outside.symlink_to(inside)
        source = str(outside)
    else:
        outside.mkdir()
        (outside / "release.pub").symlink_to(inside / "k.pub")
        source = str(outside)
    r = signed.verify(public_keys=source)
    assert r.status == "UNTRUSTED" and r.reason_code == "trust_anchor_in_tree", r.summary


def test_a_forged_or_exposed_quick_cache_is_not_trusted(signed: Signed, tmp_path: Path) -> None:
    """A quick-mode cache others can write is not used: a tampered file is found by hashing."""
    cache = tmp_path / "cache"
    assert signed.verify(quick=True, cache_dir=str(cache)).status == "VERIFIED"
    assert signed.verify(quick=True, cache_dir=str(cache)).mode == "quick"
    cache.chmod(0o777)
    target = signed.root / "app" / "pkg" / "mod.py"
    st = target.stat()
    target.write_text("X = 2\n" * 100)  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = signed.verify(quick=True, cache_dir=str(cache))
    assert r.status == "FAILED" and r.mode == "full"
    assert any("writable by group or others" in n for n in r.notes)


def test_build_warns_when_exclusions_hide_code(tree: Path) -> None:
    """Excluding bytecode, extension modules or .pth files is warned about at build time."""
    for patterns in (["*.pyc"], ["__pycache__/"], ["*.so"], ["*.pth"]):
        warnings = build_manifest(str(tree), deployment="svc", exclude=patterns).warnings
        assert any("leave code unchecked" in w for w in warnings), patterns
    assert not any("code" in w for w in build_manifest(str(tree), deployment="svc", exclude=["*.log"]).warnings)


def test_build_warns_about_links_leaving_the_tree(tree: Path) -> None:
    """A symlink whose target leaves the tree is warned about at build time."""
    (tree / "app" / "escape").symlink_to("../../outside.txt")
    (tree / "app" / "stays").symlink_to("../data/empty")
    warnings = build_manifest(str(tree), deployment="svc").warnings
    assert any("link-outside" in w and "outside the tree" in w for w in warnings)
    assert any("app/escape" in w for w in warnings)
    assert not any("app/stays" in w or "link-inside" in w for w in warnings)
