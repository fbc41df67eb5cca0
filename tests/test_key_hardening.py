"""Secret keys and passwords: bounded key derivation, keys in excluded paths, password files, empty labels."""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from duri_integrity.build import build_manifest
from duri_integrity.errors import TreeError
from duri_integrity.keyscan import excluded_secret_keys
from duri_integrity.signing import MEMLIMIT_MAX, OPSLIMIT_MAX

from .conftest import Keys, Signed, assert_one_clear_line, build_and_sign, new_keys

ROOT = Path(__file__).resolve().parent.parent


def _cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line, as ``python -m duri_integrity`` (this checkout: conftest sets PYTHONPATH)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")}
    full_env["DURI_INTEGRITY_DEPLOYMENT"] = "svc"
    full_env["DURI_INTEGRITY_SYSTEM_DIR"] = os.environ["DURI_INTEGRITY_SYSTEM_DIR"]
    full_env["DURI_INTEGRITY_STATE_DIR"] = os.environ["DURI_INTEGRITY_STATE_DIR"]
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "duri_integrity", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
        preexec_fn=preexec,
    )


def _scrypt_key(path: Path, opslimit: int, memlimit: int) -> Path:
    """A password-protected key file in minisign's layout with the given scrypt limits (random key part)."""
    raw = b"EdScB2" + os.urandom(32) + opslimit.to_bytes(8, "little") + memlimit.to_bytes(8, "little")
    path.write_text("untrusted comment: x\n" + base64.b64encode(raw + os.urandom(104)).decode() + "\n")
    path.chmod(0o600)
    return path


def _password_file(path: Path, text: str = "pw", mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _small_tree(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "a.py").write_text("A = 1\n")
    return root


# F3: the scrypt limits an encrypted key asks for are bounded by minisign's own.


@pytest.mark.parametrize(
    ("opslimit", "memlimit"),
    [
        ((1 << 64) - 1, 1 << 20),  # the attacker's first key: a traceback ending in MemoryError
        (1 << 33, 1 << 30),  # minutes of CPU with 1 GiB held
        (OPSLIMIT_MAX, MEMLIMIT_MAX + 1),
        (OPSLIMIT_MAX + 1, MEMLIMIT_MAX),
    ],
)
def test_build_refuses_scrypt_limits_above_minisigns(tmp_path: Path, opslimit: int, memlimit: int) -> None:
    """build with a key asking scrypt for more than minisign -G writes: one line, exit 4, nothing derived."""
    key = _scrypt_key(tmp_path / "k.key", opslimit, memlimit)
    pw = _password_file(tmp_path / "pw")
    r = _cli(
        "build",
        str(_small_tree(tmp_path / "T")),
        "-m",
        str(tmp_path / "m.json"),
        "-s",
        str(key),
        "--password-file",
        str(pw),
    )
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)
    assert "more than minisign's own limits" in r.stderr and f"opslimit {opslimit:,}" in r.stderr
    assert not (tmp_path / "m.json").exists()


def test_sign_and_doctor_refuse_scrypt_limits_above_minisigns(signed: Signed, tmp_path: Path) -> None:
    """sign (exit 4, one line) and doctor's secret-key check (FAIL, exit 1) refuse the same key."""
    key = _scrypt_key(tmp_path / "k.key", (1 << 64) - 1, MEMLIMIT_MAX)
    pw = _password_file(tmp_path / "pw")
    r = _cli("sign", str(signed.manifest), "-s", str(key), "--password-file", str(pw))
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)
    assert "more than minisign's own limits" in r.stderr
    r = _cli(
        "doctor", str(signed.root), "-p", str(signed.keys.public), "-s", str(key), "--password-file", str(pw), "--json"
    )
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and not checks["secret key"]["ok"]
    assert "more than minisign's own limits" in checks["secret key"]["detail"]


def test_out_of_memory_while_deriving_is_one_clear_line(tmp_path: Path) -> None:
    """A key within the limits whose derivation cannot get its memory (here: a 600 MiB address-space
    limit against scrypt's 1 GiB) is one line and exit 4, not a MemoryError traceback."""
    key = _scrypt_key(tmp_path / "k.key", OPSLIMIT_MAX, MEMLIMIT_MAX)  # exactly what minisign -G writes
    pw = _password_file(tmp_path / "pw")

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))

    tree = _small_tree(tmp_path / "T")
    r = _cli(
        "build",
        str(tree),
        "-m",
        str(tmp_path / "m.json"),
        "-s",
        str(key),
        "--password-file",
        str(pw),
        preexec=limit_memory,
    )
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)
    assert "not enough memory to derive the key" in r.stderr


@pytest.mark.minisign
def test_stock_minisign_password_key_still_signs(tmp_path: Path, minisign_bin: str) -> None:
    """A key made by `minisign -G` with a password (scrypt at minisign's full limits) signs a build
    that minisign itself then verifies."""
    sk, pk = tmp_path / "m.key", tmp_path / "m.pub"
    subprocess.run(
        [minisign_bin, "-G", "-p", str(pk), "-s", str(sk)],
        input="s3cret\ns3cret\n",
        text=True,
        check=True,
        capture_output=True,
    )
    raw = base64.b64decode(sk.read_text().splitlines()[1])
    assert raw[2:4] == b"Sc" and int.from_bytes(raw[38:46], "little") == OPSLIMIT_MAX
    pw = _password_file(tmp_path / "pw", "s3cret")
    tree = _small_tree(tmp_path / "T")
    r = _cli("build", str(tree), "-s", str(sk), "--password-file", str(pw))
    assert r.returncode == 0, r.stderr
    out = subprocess.run(
        [minisign_bin, "-Vm", str(tree / "MANIFEST.json"), "-p", str(pk)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "deployment:svc" in out.stdout


# F4: a secret key in the excluded part of the tree still ships; build refuses it, doctor flags it.


def _exclusion_case(case: str, tree: Path, keys: Keys) -> tuple[list[str], str]:
    """Place a key in the tree for one case; the build's exclusion options and the path to name."""
    if case == "by name":
        shutil.copy(keys.secret, tree / "app" / "deploy.key")
        return ["-x", "app/deploy.key"], "app/deploy.key"
    if case == "in a directory":
        (tree / "secret" / "deep").mkdir(parents=True)
        shutil.copy(keys.secret, tree / "secret" / "deep" / "k")
        return ["-x", "secret/"], "secret/deep/k"
    if case == "encrypted":
        _scrypt_key(tree / "app" / "old.key", 1 << 20, 1 << 25)
        return ["-x", "*.key"], "app/old.key"
    os.link(keys.secret, tree / "app" / "blob.bin")  # a hard link to the -s key, under another name
    return ["-x", "*.bin"], "app/blob.bin"


@pytest.mark.parametrize("case", ["by name", "in a directory", "encrypted", "hard link to the signing key"])
def test_build_refuses_a_secret_key_in_the_excluded_part(tmp_path: Path, keys: Keys, case: str) -> None:
    """An excluded file that is a secret key (or the -s key itself) ships all the same: build refuses it."""
    tree = _small_tree(tmp_path / "T")
    options, shown = _exclusion_case(case, tree, keys)
    r = _cli("build", str(tree), *options, "-s", str(keys.secret))
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)
    assert "excluded from the manifest but a minisign secret key" in r.stderr and shown in r.stderr
    assert not (tree / "MANIFEST.json").exists()


def test_excluded_links_and_fifos_are_neither_followed_nor_opened(tmp_path: Path, keys: Keys) -> None:
    """A symlink to a key (it ships as a link, not the key) and a FIFO (it must not hang the build) in an
    excluded directory do not stop the build."""
    tree = _small_tree(tmp_path / "T")
    (tree / "var").mkdir()
    (tree / "var" / "key-link").symlink_to(keys.secret)
    os.mkfifo(tree / "var" / "fifo")
    r = _cli("build", str(tree), "-x", "var/", "-s", str(keys.secret))
    assert r.returncode == 0, r.stderr
    assert "secret key" not in r.stderr


def test_the_signing_key_is_found_by_inode_whatever_it_reads_as(tmp_path: Path) -> None:
    """The check for the signing key itself goes by device and inode, not content or name."""
    tree = _small_tree(tmp_path / "T")
    not_a_key = tmp_path / "plain.txt"
    not_a_key.write_text("not a key\n")
    os.link(not_a_key, tree / "app" / "data.txt")
    for excluded in ([("app/data.txt", False)], [("app", True)]):
        scan = excluded_secret_keys(str(tree), excluded, [str(not_a_key)])
        assert scan.found == ["app/data.txt"] and scan.complete
        assert excluded_secret_keys(str(tree), excluded).found == []


def test_a_look_cut_short_by_the_bound_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound on excluded entries (or on recorded exclusions) the build warns that it could not check."""
    tree = _small_tree(tmp_path / "T")
    (tree / "cache").mkdir()
    for i in range(30):
        (tree / "cache" / f"{i}.dat").write_text(str(i))
    assert not any(
        "could not be checked fully" in w
        for w in build_manifest(str(tree), deployment="svc", exclude=["cache/"]).warnings
    )
    monkeypatch.setattr("duri_integrity.keyscan.ENTRY_LIMIT", 10)
    warnings = build_manifest(str(tree), deployment="svc", exclude=["cache/"]).warnings
    assert any("could not be checked fully for minisign secret keys or links to the signing key" in w for w in warnings)
    assert any("it holds over" in w for w in warnings), warnings
    monkeypatch.undo()
    monkeypatch.setattr("duri_integrity.keyscan.RecordingExcluder.LIMIT", 5)
    warnings = build_manifest(str(tree), deployment="svc", exclude=["cache/*.dat"]).warnings
    assert any("could not be checked fully for minisign secret keys" in w for w in warnings)
    assert any("over 5 paths were excluded" in w for w in warnings), warnings


def test_doctor_flags_a_secret_key_in_the_excluded_part(tmp_path: Path) -> None:
    """doctor's no-secret-keys check looks through what the trusted manifest excludes, and finds the
    signing key there by inode."""
    keys = new_keys(tmp_path / "keys")
    tree = _small_tree(tmp_path / "tree")
    signed = build_and_sign(tree, keys, exclude=["secret/"])
    (tree / "secret").mkdir()

    def doctor(*extra: str) -> dict[str, dict[str, object]]:
        r = _cli("doctor", str(tree), "-p", str(keys.public), "--json", *extra)
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    assert doctor()["no secret keys around the tree"]["ok"]
    shutil.copy(keys.secret, tree / "secret" / "copy")
    check = doctor()["no secret keys around the tree"]
    assert not check["ok"] and str(tree / "secret" / "copy") in str(check["detail"])
    os.unlink(tree / "secret" / "copy")
    os.link(signed.keys.secret, tree / "secret" / "link")
    check = doctor("-s", str(keys.secret))["no secret keys around the tree"]
    assert not check["ok"] and str(tree / "secret" / "link") in str(check["detail"])


# Minor 1: a password file is held to the secret key's rules.


def test_password_file_others_can_read_or_write_is_refused(tmp_path: Path, keys: Keys) -> None:
    """A password file others can write is refused outright; one they can read unless --allow-insecure-key."""
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    pw = _password_file(tmp_path / "pw", mode=0o666)
    r = _cli("keygen", "--encrypt", "--password-file", str(pw), "-s", str(sk), "-p", str(pk))
    assert r.returncode == 4 and "writable by group or others (mode 0666)" in r.stderr and not sk.exists()
    assert_one_clear_line(r.stderr)
    pw.chmod(0o644)
    r = _cli("keygen", "--encrypt", "--password-file", str(pw), "-s", str(sk), "-p", str(pk))
    assert r.returncode == 4 and "readable by group or others (mode 0644)" in r.stderr and not sk.exists()
    pw.chmod(0o600)
    assert _cli("keygen", "--encrypt", "--password-file", str(pw), "-s", str(sk), "-p", str(pk)).returncode == 0
    tree = _small_tree(tmp_path / "T")
    pw.chmod(0o644)
    r = _cli("build", str(tree), "-s", str(sk), "--password-file", str(pw))
    assert r.returncode == 4 and "readable by group or others" in r.stderr
    r = _cli("build", str(tree), "-s", str(sk), "--password-file", str(pw), "--allow-insecure-key")
    assert r.returncode == 0, r.stderr
    r = _cli("sign", str(tree / "MANIFEST.json"), "-s", str(sk), "--password-file", str(pw))
    assert r.returncode == 4 and "readable by group or others" in r.stderr
    pw.chmod(0o666)
    r = _cli("build", str(tree), "-s", str(sk), "--password-file", str(pw), "--allow-insecure-key")
    assert r.returncode == 4 and "writable by group or others" in r.stderr


# Minor 2: an explicitly empty --release or --deployment is a usage error.


def test_empty_release_or_deployment_is_a_usage_error(tmp_path: Path, keys: Keys) -> None:
    """--release "" and --deployment "" (an unset variable) are exit 2 with a line saying the value is empty."""
    tree = _small_tree(tmp_path / "T")
    for args in (
        ["build", str(tree), "--release", ""],
        ["build", str(tree), "-d", ""],
        ["verify", str(tree), "-d", ""],
    ):
        r = _cli(*args, "-p" if args[0] == "verify" else "-s", str(keys.public if args[0] == "verify" else keys.secret))
        assert r.returncode == 2, (args, r.stderr)
        assert_one_clear_line(r.stderr)
        assert "the value is empty" in r.stderr
    assert not (tree / "MANIFEST.json").exists()


def test_readme_release_command_with_and_without_git_tag(tmp_path: Path) -> None:
    """The README's build step, run as written: labels the release when GIT_TAG is set, exit 2 when unset."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"### 2\. At release time: build and sign\n\n```sh\n(.*?)\n```", readme, re.DOTALL)
    assert block is not None
    script = (
        block.group(1)
        .replace("python3 -m", f"{sys.executable} -m")
        .replace("duri-integrity ", f"{sys.executable} -m duri_integrity ")
    )
    _small_tree(tmp_path / "build" / "myservice")
    assert _cli("keygen", "-s", "release.key", "-p", "release.pub", cwd=tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "GIT_TAG"}
    r = subprocess.run(
        ["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 2 and "the value is empty" in r.stderr
    r = subprocess.run(
        ["sh", "-c", script],
        cwd=tmp_path,
        env={**env, "GIT_TAG": "v1.2.3"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "build" / "myservice" / "MANIFEST.json").read_text())
    assert manifest["release"] == "v1.2.3" and manifest["deployment"] == "myservice"


def test_code_warning_names_only_what_the_tree_leaves_out(tmp_path: Path) -> None:
    """The pattern warning speaks of the patterns; the 'loadable as code' one only of paths really left out."""
    tree = tmp_path / "t"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / "a.py").write_text("x = 1\n")
    warnings = build_manifest(str(tree), deployment="svc", exclude=["*.pyc"]).warnings
    assert any("exclusion patterns leave code unchecked" in w for w in warnings), warnings
    assert not any("loadable as code" in w for w in warnings), warnings
    (tree / "cache" / "__pycache__").mkdir(parents=True)
    (tree / "cache" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0" * 16)
    warnings = build_manifest(str(tree), deployment="svc", exclude=["cache/"]).warnings
    [code] = [w for w in warnings if "loadable as code" in w]
    assert "cache/__pycache__" in code, code


def test_an_excluded_file_that_cannot_be_read_makes_the_look_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An excluded file build cannot read may be a key: build warns that it could not check fully."""
    from duri_integrity import keyscan
    from duri_integrity.files import UnreadableFile
    from duri_integrity.files import read_head as real

    tree = tmp_path / "t"
    (tree / "ex").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "ex" / "locked").write_text("unreadable\n")

    def read_head(path: str, limit: int, what: str, dir_fd: int | None = None) -> bytes:
        if path.endswith("locked"):
            raise UnreadableFile(f"cannot read {what} {path!r}: Permission denied")
        return real(path, limit, what, dir_fd)

    monkeypatch.setattr(keyscan, "read_head", read_head)
    warnings = build_manifest(str(tree), deployment="svc", exclude=["ex/"]).warnings
    assert any("could not be checked fully" in w and "ex/locked could not be listed or read" in w for w in warnings)
    (tree / "ex" / "locked").unlink()
    warnings = build_manifest(str(tree), deployment="svc", exclude=["ex/"]).warnings
    assert not any("could not be checked fully" in w for w in warnings), warnings


def test_a_key_deep_in_an_excluded_directory_is_found_past_path_max(tmp_path: Path, keys: Keys) -> None:
    """A secret key in an excluded directory whose path is longer than PATH_MAX (4,096 bytes) stops the
    build: the excluded part is read from the root one directory at a time, as the walk reads (an outside
    attack shipped a key 41 levels of 100 characters down, with only a warning)."""
    tree = tmp_path / "t"
    deep = tree / "ex"
    deep.mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(45):  # 45 x 101 bytes: past PATH_MAX however short tmp_path is
            os.mkdir("d" * 100, dir_fd=fd)
            inner = os.open("d" * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        key = os.open("deploy.key", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(key, keys.secret.read_bytes())
        os.close(key)
    finally:
        os.close(fd)
    with pytest.raises(TreeError, match="excluded from the manifest but a minisign secret key"):
        build_manifest(str(tree), deployment="svc", exclude=["ex/"])


@pytest.mark.parametrize("name", ["MANIFEST.json", "MANIFEST.json.minisig"])
@pytest.mark.parametrize("how", ["a key", "the signing key hard-linked"])
def test_a_key_in_the_tools_own_file_names_stops_a_build_written_elsewhere(
    tmp_path: Path, keys: Keys, name: str, how: str
) -> None:
    """MANIFEST.json and its signature at the root are left out of every manifest; when the build writes
    its manifest elsewhere they ship as they are, so a key there stops it (an outside attack shipped one)."""
    tree = _small_tree(tmp_path / "T")
    if how == "a key":
        shutil.copy(keys.secret, tree / name)
    else:
        os.link(keys.secret, tree / name)
    r = _cli("build", str(tree), "-s", str(keys.secret), "-m", str(tmp_path / "out.json"))
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)
    assert "excluded from the manifest but a minisign secret key" in r.stderr and name in r.stderr
    assert not (tmp_path / "out.json").exists()
    (tree / name).unlink()
    (tree / name).write_text("{}\n")  # an old manifest there, not a key: the build goes ahead
    assert _cli("build", str(tree), "-s", str(keys.secret), "-m", str(tmp_path / "out.json")).returncode == 0
