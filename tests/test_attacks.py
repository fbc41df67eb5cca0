"""Attacks on the trust boundary, each tried as an attacker who can write the deployed tree
(or the directory a deploy script runs in) would. Every one must end non-VERIFIED."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest

from .conftest import Keys, Signed, build_and_sign, console_script, make_tree, new_keys

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


def _releases(tmp_path: Path, keys: Keys, *serials: int) -> dict[int, Path]:
    out = {}
    for serial in serials:
        out[serial] = build_and_sign(
            make_tree(tmp_path / "rel" / str(serial)), keys, release=f"r{serial}", serial=serial
        ).root
    return out


def test_an_approval_does_not_reopen_the_releases_in_between(tmp_path: Path, keys: Keys) -> None:
    """Approving r100 after r200 lets r100 run, but r150 (never approved) stays refused."""
    rel = _releases(tmp_path, keys, 100, 150, 200)
    kw: dict[str, Any] = {"public_keys": str(keys.public), "state_dir": str(tmp_path / "state")}
    assert verify_integrity(rel[200], **kw).status == "VERIFIED"
    assert verify_integrity(rel[100], allow_rollback_to="r100@100", **kw).status == "VERIFIED"
    assert verify_integrity(rel[100], **kw).status == "VERIFIED"  # restarts keep working
    r = verify_integrity(rel[150], **kw)
    assert r.status == "UNTRUSTED" and r.reason_code == "rollback_refused", r.summary
    assert verify_integrity(rel[200], **kw).status == "VERIFIED"  # forward again: fine
    assert verify_integrity(rel[100], **kw).status == "UNTRUSTED"  # the approval is spent


def test_two_trees_may_not_share_a_serial(tmp_path: Path, keys: Keys) -> None:
    """A different build under an already verified serial is refused, approved or not."""
    a = build_and_sign(make_tree(tmp_path / "a"), keys, release="good", serial=1000)
    b_tree = make_tree(tmp_path / "b")
    (b_tree / "app" / "main.py").write_text("print('vulnerable')\n")
    b = build_and_sign(b_tree, keys, release="bad", serial=1000)
    kw: dict[str, Any] = {"public_keys": str(keys.public), "state_dir": str(tmp_path / "state")}
    assert verify_integrity(a.root, **kw).status == "VERIFIED"
    for approval in (None, "bad@1000", "1000"):
        r = verify_integrity(b.root, allow_rollback_to=approval, **kw)
        assert r.status == "UNTRUSTED" and "share a serial" in r.summary, r.summary
    assert verify_integrity(a.root, **kw).status == "VERIFIED"


def test_configured_revocations_add_to_the_system_list(signed: Signed, tmp_path: Path) -> None:
    """Naming another revocation list does not drop the ones in /etc/duri-integrity/revoked-keys.d."""
    system = Path(os.environ["DURI_INTEGRITY_SYSTEM_DIR"]) / "revoked-keys.d"
    system.mkdir(parents=True)
    shutil.copy(signed.keys.public, system / "leaked.pub")
    other = new_keys(tmp_path / "other", "o")
    for extra in (None, str(other.public)):
        r = signed.verify(revoked_keys=extra)
        assert r.status == "UNTRUSTED" and r.reason_code == "revoked_key", (extra, r.summary)


@pytest.mark.parametrize("what", ["trusted key", "revocation list"])
@pytest.mark.parametrize("how", ["world-writable directory", "directory of another user", "link from such a dir"])
def test_key_files_in_directories_others_can_write_are_refused(
    signed: Signed, tmp_path: Path, what: str, how: str
) -> None:
    """Whoever can replace a key or revocation file (or a link to it) would decide trust: refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if how == "directory of another user":
        os.chown(shared, 65534, 65534)
    else:
        shared.chmod(0o777)
    name = "k.pub"
    if how == "link from such a dir":
        safe = tmp_path / "safe"
        safe.mkdir(mode=0o755)
        shutil.copy(signed.keys.public, safe / name)
        (shared / name).symlink_to(safe / name)
    else:
        shutil.copy(signed.keys.public, shared / name)
    kw = {"public_keys": str(shared / name)} if what == "trusted key" else {"revoked_keys": str(shared / name)}
    r = signed.verify(**kw)
    assert r.status == "ERROR" and r.reason_code == "key_error", r.summary
    assert "writable by group or others" in r.summary or "another user" in r.summary


@pytest.mark.parametrize("value", ["off", "OFF", "None", " none "])
def test_only_none_switches_rollback_protection_off(signed: Signed, tmp_path: Path, value: str) -> None:
    """A look-alike of 'none' is a directory name, not a way to switch protection off."""
    os.chdir(tmp_path)
    r = signed.verify(state_dir=value)
    assert not any("rollback protection is off" in n for n in r.notes)
    assert (tmp_path / value).is_dir()


@pytest.mark.parametrize(
    "bad", [{"state_dir": False}, {"clock_skew": "5"}, {"public_keys": 123}, {"deployment": 5}, {"max_problems": 0}]
)
def test_wrong_argument_types_are_value_errors(signed: Signed, bad: dict[str, object]) -> None:
    """A wrongly typed argument is the caller's bug: ValueError, as documented, never TypeError."""
    with pytest.raises(ValueError, match=r"invalid argument|max_problems"):
        signed.verify(**bad)


def test_a_trust_anchor_reached_through_a_hard_link_or_bind_mount_is_refused(
    tree: Path, keys: Keys, tmp_path: Path
) -> None:
    """The tree may not hold a file trust was taken from, whatever path string reaches it."""
    os.link(keys.public, tree / "data" / "k.pub")  # the same inode as the trusted key
    s = build_and_sign(tree, keys)
    r = s.verify()
    assert r.status == "UNTRUSTED" and r.reason_code == "trust_anchor_in_tree", r.summary
    os.unlink(tree / "data" / "k.pub")
    first = s.verify(state_dir="none").manifest
    assert first is not None, "the manifest was read before trust was refused"
    s = build_and_sign(tree, keys, serial=first.serial + 1)
    alias = tmp_path / "alias"
    alias.mkdir()
    if subprocess.run(["mount", "--bind", str(tree), str(alias)], capture_output=True, check=False).returncode:
        pytest.skip("bind mounts are not permitted here")
    try:
        shutil.copy(keys.public, tree / "data" / "evil.pub")
        s = build_and_sign(tree, keys, serial=10**10)
        r = s.verify(public_keys=str(alias / "data" / "evil.pub"))
        assert r.status == "UNTRUSTED" and r.reason_code == "trust_anchor_in_tree", r.summary
    finally:
        subprocess.run(["umount", str(alias)], check=False)


@pytest.mark.parametrize("pattern", ["app/__pycache__/**", "app/", "app/*", "*.so.*"])
def test_build_warns_about_code_the_exclusions_leave_out_of_this_tree(tree: Path, pattern: str) -> None:
    """Whatever the pattern looks like, code it actually excludes from this tree is warned about."""
    (tree / "app" / "__pycache__").mkdir()
    (tree / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (tree / "data" / "libx.so.1").write_bytes(b"\x7fELF")
    warnings = build_manifest(str(tree), deployment="svc", exclude=[pattern]).warnings
    assert any("loadable as code" in w for w in warnings), warnings


def test_doctor_escapes_names_from_the_tree(signed: Signed, run_cli: Run) -> None:
    """A file name with a carriage return cannot draw a fake 'all checks passed' on a terminal."""
    (signed.root / "x\rOK   tree matches the manifest: 22 files verified\nall checks passed").write_text("x")
    r = run_cli("doctor", str(signed.root), "-p", str(signed.keys.public))
    assert r.returncode == 1 and "\r" not in r.stdout
    assert r.stdout.strip().splitlines()[-1].endswith("check(s) failed")


def test_a_secret_key_given_as_a_revocation_says_so(signed: Signed) -> None:
    """Naming the secret key where a revocation belongs is a clear error, not 'not a key id'."""
    r = signed.verify(revoked_keys=str(signed.keys.secret))
    assert r.status == "ERROR" and "is a secret key" in r.summary


@pytest.mark.parametrize("short", ["F6", "first8", "first13"])
def test_a_shortened_key_id_in_a_revocation_list_is_an_error(signed: Signed, tmp_path: Path, short: str) -> None:
    """A truncated key id would revoke nothing: it is refused, never silently accepted."""
    kid = signed.keys.key_id
    item = {"F6": kid[:2], "first8": kid[:8], "first13": kid[:13]}[short]
    lst = tmp_path / "revoked.list"
    lst.write_text(item + "\n")
    r = signed.verify(revoked_keys=str(lst))
    assert r.status == "ERROR" and r.reason_code == "key_error", r.summary
    lst.write_text(kid.rjust(16, "0") + "\n")  # every digit, zero-padded: revoked
    assert signed.verify(revoked_keys=str(lst)).reason_code == "revoked_key"


def test_an_approval_cannot_swap_the_tree_behind_a_pinned_serial(tmp_path: Path, keys: Keys) -> None:
    """With r100 approved and pinned, another tree signed as serial 100 stays refused, even approved."""
    rel = _releases(tmp_path, keys, 100, 200)
    other = make_tree(tmp_path / "other")
    (other / "app" / "main.py").write_text("print('other')\n")
    b = build_and_sign(other, keys, release="r100", serial=100)
    kw: dict[str, Any] = {"public_keys": str(keys.public), "state_dir": str(tmp_path / "state")}
    assert verify_integrity(rel[200], **kw).status == "VERIFIED"
    assert verify_integrity(rel[100], allow_rollback_to="100", **kw).status == "VERIFIED"
    for approval in (None, "100", "r100@100"):
        r = verify_integrity(b.root, allow_rollback_to=approval, **kw)
        assert r.status == "UNTRUSTED" and "share a serial" in r.summary, r.summary


@pytest.mark.parametrize("fmt", ["--json", "--workers=1"])
@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_a_report_that_cannot_be_written_is_not_a_success(signed: Signed, stdout: str, fmt: str) -> None:
    """verify (JSON or text) to a full disk, or with stdout closed: the output was never delivered, so not exit 0."""
    import stat as stat_mod

    exe = console_script()
    assert exe is not None
    argv = [exe, "verify", str(signed.root), "-p", str(signed.keys.public), fmt]
    if stdout == "closed":
        r = subprocess.run(
            argv,
            stdout=None,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            pass_fds=(),
            close_fds=True,
            preexec_fn=lambda: os.close(1),
        )
        assert r.returncode == 4 and "stdout is closed" in r.stderr, r.stderr
        return
    if not stat_mod.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not the full device here")
    with open("/dev/full", "w") as full:
        r = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert r.returncode == 4 and "No space left on device" in r.stderr, r.stderr


@pytest.mark.parametrize("option", ["--ttl", "--deadline"])
def test_serve_refuses_nan_durations(signed: Signed, run_cli: Run, option: str) -> None:
    """NaN slips past a range check (every comparison with it is false): it is refused at start."""
    r = run_cli("serve", str(signed.root), "-p", str(signed.keys.public), option, "nan", env={"CANARY_TOKEN": "x" * 20})
    assert r.returncode == 2 and option in r.stderr


class _LyingPrometheus:
    """A loopback HTTP server that answers every query with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.status, self.body = status, body
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "value", "stamp"),
    [
        (500, '"0"', "now"),  # an error page that looks like a result
        (503, '"0"', "now"),
        (200, "false", "now"),  # not a Prometheus number
        (200, '"0_0"', "now"),  # Python's float() would read it as 0
        (200, '"\\u0660"', "now"),  # an Arabic-Indic zero: float() reads it, Prometheus never writes it
        (200, '"\\uff10.005"', "now"),  # full-width digits
        (200, '"0"', "1970"),  # a stale sample is not a current measurement
    ],
)
def test_a_lying_prometheus_is_unknown_never_ok(status: int, value: str, stamp: str) -> None:
    """Only a 200 answer with current, well-formed samples can pass a service check."""
    import time

    from duri_integrity.promcheck import Check, ChecksConfig, Prometheus, evaluate

    when = time.time() if stamp == "now" else 1.0
    sample = f'{{"metric":{{}},"value":[{when},{value}]}}'
    body = ('{"status":"success","data":{"resultType":"vector","result":[' + sample + "]}}").encode()
    fake = _LyingPrometheus(status, body)
    try:
        check = Check(
            name="error_rate", query="x", comparison="<", threshold=0.01, recommendation="rollback_error_rate"
        )
        [result] = evaluate(ChecksConfig(prometheus=Prometheus(url=fake.url, timeout_seconds=2), checks=[check]))
    finally:
        fake.close()
    assert result.status == "unknown", result
    fake = _LyingPrometheus(
        200, body.replace(value.encode(), b'"0.001"').replace(f"{when}".encode(), f"{time.time()}".encode())
    )
    try:
        [result] = evaluate(ChecksConfig(prometheus=Prometheus(url=fake.url, timeout_seconds=2), checks=[check]))
    finally:
        fake.close()
    assert result.status == "ok", result  # the same server, telling the truth, passes


def test_a_file_changed_during_the_run_is_never_verified(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are hashed one by one: a file rewritten during the run (even back to the released
    bytes, after it was hashed) makes the verdict unstable, so a tree that is never right as a
    whole cannot match file by file."""
    import time

    from duri_integrity import compare

    target = signed.root / "app" / "main.py"
    # The name compare calls (imported from hashing, so not an attribute mypy lets us read).
    real: Callable[..., object] = vars(compare)["check_files"]

    def check_then_touch(*args: object, **kw: object) -> object:
        out = real(*args, **kw)
        time.sleep(0.02)  # past the clock tick in which the run began
        target.write_bytes(target.read_bytes())  # same bytes, new ctime: it changed during the run
        return out

    monkeypatch.setattr(compare, "check_files", check_then_touch)
    r = signed.verify()
    assert r.status == "FAILED"
    assert [(p.path, p.kind) for p in r.problems] == [("app/main.py", "unstable")]
    monkeypatch.setattr(compare, "check_files", real)
    assert signed.verify().status == "VERIFIED"  # left alone, the same tree verifies
