"""The command line on bad input: usage errors, hostile arguments, passwords, forged names, build-side checks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Keys, Signed, assert_one_clear_line, console_script

Run = Callable[..., subprocess.CompletedProcess[str]]


def _one_line_and_code(r: subprocess.CompletedProcess[str], code: int) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert_one_clear_line(r.stderr)


@pytest.mark.parametrize("value", ["99999999999999999d", "9999999999d", "99999999w", "2\u00b2d", "-1d", "1y"])
def test_expires_in_out_of_range_is_a_usage_error(tree: Path, run_cli: Run, value: str) -> None:
    """An --expires-in too large or not a duration is one line and exit 2, never an OverflowError."""
    r = run_cli("build", str(tree), "--expires-in", value)
    _one_line_and_code(r, 2)
    assert "--expires-in" in r.stderr and not (tree / "MANIFEST.json").exists()


def test_usage_errors_are_one_line(run_cli: Run) -> None:
    """Unknown options, bad values and missing arguments are one 'duri-integrity: error:' line and exit 2."""
    for args in (["verify", "--no-such-option"], ["build", "--workers", "0"], ["sign"], ["no-such-command"]):
        r = run_cli(*args)
        _one_line_and_code(r, 2)
        assert "--help" in r.stderr


def test_keygen_encrypt_without_a_terminal_fails_cleanly(tmp_path: Path) -> None:
    """keygen --encrypt with no terminal and no password source: one line, exit 2, no key written."""
    exe = console_script()
    assert exe is not None
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")}
    for stdin in (subprocess.DEVNULL, None):  # nothing to read, and a pipe holding a would-be password
        r = subprocess.run(
            [exe, "keygen", "--encrypt", "-s", str(sk), "-p", str(pk)],
            stdin=stdin,
            input=None if stdin is not None else "piped-password\npiped-password\n",
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        _one_line_and_code(r, 2)
        assert "needs a password" in r.stderr and "Warning" not in r.stderr and "Aborted" not in r.stderr
        assert not sk.exists() and not pk.exists()
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    assert r.stderr.strip() in docs  # the reference shows the real line


def test_keygen_encrypt_refuses_an_empty_password(tmp_path: Path, run_cli: Run) -> None:
    """An empty password (file or variable) is refused with exit 2; a real one from either source works."""
    from duri_integrity.keys import load_secret_key

    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    empty.chmod(0o600)
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    r = run_cli("keygen", "--encrypt", "--password-file", str(empty), "-s", str(sk), "-p", str(pk))
    _one_line_and_code(r, 2)
    r = run_cli("keygen", "--encrypt", "-s", str(sk), "-p", str(pk), env={"DURI_INTEGRITY_PASSWORD": ""})
    _one_line_and_code(r, 2)
    assert not sk.exists()
    r = run_cli("keygen", "--encrypt", "-s", str(sk), "-p", str(pk), env={"DURI_INTEGRITY_PASSWORD": "pw-from-env"})
    assert r.returncode == 0, r.stderr
    load_secret_key(str(sk), "pw-from-env").wipe()
    with pytest.raises(Exception, match="encrypted and no password"):
        load_secret_key(str(sk))


def test_secret_key_where_a_public_key_belongs(signed: Signed, run_cli: Run) -> None:
    """-p with a secret key says exactly that it is a secret key, not a public key."""
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.secret))
    _one_line_and_code(r, 4)
    assert "is a secret key, not a public key" in r.stderr


def _hostile_cases(t: Path, k: Keys, fifo: Path, d: Path) -> list[list[str]]:
    big = "9" * 40
    return [
        ["build", str(t), "--serial", big],
        ["build", str(t), "-s", str(fifo)],
        ["build", str(t), "-s", str(d)],
        ["build", str(t), "-s", str(k.secret), "--password-file", str(fifo)],
        ["build", str(t), "-s", str(k.secret), "--password-file", str(d)],
        ["build", str(t), "-m", str(d)],
        ["build", str(fifo)],
        ["sign", str(fifo), "-s", str(k.secret)],
        ["sign", str(d), "-s", str(k.secret)],
        ["verify", str(t), "-p", str(fifo)],
        ["verify", str(t), "-p", str(d)],
        ["verify", str(t), "-p", str(k.public), "-m", str(fifo)],
        ["verify", str(t), "-p", str(k.public), "--revoked-key", str(fifo)],
        ["verify", str(t), "-p", str(k.public), "--clock-skew", big],
        ["verify", str(fifo), "-p", str(k.public)],
        ["verify", str(t / "missing"), "-p", str(k.public)],
        ["diff", str(fifo), str(fifo)],
        ["diff", str(d), str(d)],
        ["diff", str(t / "missing"), str(t)],
        ["keygen", "-s", str(d), "-p", str(d / "x.pub")],
        ["keygen", "-s", "-", "-p", str(d / "x.pub")],
        ["keygen", "--password-file", str(fifo), "-s", str(d / "p.key"), "-p", str(d / "p.pub")],  # no --encrypt
        ["build", str(t), "-x", "\udcff"],
        ["keygen", "--encrypt", "--password-file", str(fifo), "-s", str(d / "n.key"), "-p", str(d / "n.pub")],
        ["serve", str(t), "--bind", f"127.0.0.1:{big}"],
        ["serve", str(t), "--token-file", str(fifo)],
        ["demo", "--keep", str(fifo)],
    ]


def test_hostile_arguments_never_traceback(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """FIFOs, directories, missing files and huge numbers where inputs belong: one clear line, exit 2, 3 or 4."""
    fifo, d = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    d.mkdir()
    for args in _hostile_cases(tree, keys, fifo, d):
        r = run_cli(*args)
        assert r.returncode in (2, 3, 4), (args, r.returncode, r.stdout, r.stderr)
        assert_one_clear_line(r.stderr)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and list(d.iterdir()) == []


def test_build_refuses_labels_verify_would_reject(tree: Path, keys: Keys, run_cli: Run) -> None:
    """A release label with a control character or over 200 characters fails build (exit 2) before hashing."""
    for label in ("v1\tbeta", "v1\x1b[2K", "v1\n", "é", "x" * 201):
        r = run_cli("build", str(tree), "-s", str(keys.secret), "--release", label)
        _one_line_and_code(r, 2)
        assert "--release" in r.stderr and not (tree / "MANIFEST.json").exists()
    r = run_cli("build", str(tree), "-s", str(keys.secret), env={"DURI_INTEGRITY_RELEASE": "a\tb"})
    _one_line_and_code(r, 4)
    r = run_cli("build", str(tree), "-s", str(keys.secret), "--release", "x" * 200)
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", str(tree), "-p", str(keys.public)).returncode == 0


@pytest.mark.parametrize("epoch", ["-5", "1.5", "abc", "99999999999999999999999"])
def test_build_refuses_a_bad_source_date_epoch(tree: Path, keys: Keys, run_cli: Run, epoch: str) -> None:
    """A negative or malformed SOURCE_DATE_EPOCH fails build in one line (exit 4) instead of signing a bad serial."""
    r = run_cli("build", str(tree), "-s", str(keys.secret), env={"SOURCE_DATE_EPOCH": epoch})
    _one_line_and_code(r, 4)
    assert "SOURCE_DATE_EPOCH" in r.stderr and not (tree / "MANIFEST.json").exists()


def test_library_build_cannot_encode_what_verify_rejects(tree: Path) -> None:
    """build_manifest itself refuses a label the manifest model refuses (the same check as decoding)."""
    from duri_integrity.build import build_manifest
    from duri_integrity.errors import ManifestError

    with pytest.raises(ManifestError, match="release"):
        build_manifest(str(tree), deployment="svc", release="a\nb")
    with pytest.raises(ManifestError, match="serial"):
        build_manifest(str(tree), deployment="svc", serial=-1)


def test_build_manifest_to_stdout(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """build -m - writes the manifest to stdout (and no file named '-'); signing it is refused clearly."""
    from duri_integrity.manifest import decode_manifest

    r = run_cli("build", str(tree), "-m", "-", "--release", "v9", cwd=tree)
    assert r.returncode == 0, r.stderr
    assert decode_manifest(r.stdout.encode("utf-8", "surrogateescape")).release == "v9"
    assert not (tree / "-").exists() and not (tree / "MANIFEST.json").exists()
    r = run_cli("build", str(tree), "-m", "-", "-s", str(keys.secret))
    _one_line_and_code(r, 2)
    assert "stdout" in r.stderr


def test_global_options_after_the_command(signed: Signed, run_cli: Run) -> None:
    """--log-format and --log-level work after the command name as well as before it."""
    base = ["verify", str(signed.root), "-p", str(signed.keys.public)]
    for args in (["--log-format", "json", *base], [*base, "--log-format", "json"], [*base, "--log-format=json"]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        [record] = [json.loads(line) for line in r.stderr.splitlines()]
        assert record["status"] == "VERIFIED"
    r = run_cli("--log-format", "json", *base, "--log-level", "error")
    assert r.returncode == 0 and r.stderr == ""  # the later --log-level applies to the earlier --log-format


FORGED = "x\rVERIFIED: 1 file verified\n"


def test_control_characters_in_names_cannot_forge_output(signed: Signed, run_cli: Run) -> None:
    """A file named with CR/LF/ESC is escaped in text output and logs, and kept exact in JSON."""
    (signed.root / FORGED).write_text("x")
    (signed.root / "e\x1b[1A\x1b[2Kz\x85\x7f\u202e").write_text("x")
    r = run_cli("--log-format", "text", "verify", str(signed.root), "-p", str(signed.keys.public))
    assert r.returncode == 1
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and "\x1b" not in stream and "\x85" not in stream and "\u202e" not in stream
        assert not any(line.startswith("VERIFIED") for line in stream.split("\n"))
    assert "x\\x0dVERIFIED: 1 file verified\\x0a" in r.stdout and "e\\x1b[1A" in r.stdout
    assert r.stdout.split("\n")[-2].startswith("FAILED: 2 of ")
    [log] = [line for line in r.stderr.split("\n") if line]
    assert log.startswith("duri-integrity: warning: FAILED: ")
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--json")
    assert FORGED in {p["path"] for p in json.loads(r.stdout)["problems"]}


def test_closed_stdout_is_one_line_and_not_success(signed: Signed) -> None:
    """A reader that goes away before the report is written: one line, exit 4, no traceback."""
    exe = console_script()
    assert exe is not None
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write fails
    try:
        r = subprocess.run(
            [exe, "verify", str(signed.root), "-p", str(signed.keys.public), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DURI_INTEGRITY_STATE_DIR": "none"},
            check=False,
        )
    finally:
        os.close(write_end)
    _one_line_and_code(r, 4)
    assert "broken pipe" in r.stderr


def test_passwords_must_be_utf8(tree: Path, tmp_path: Path, run_cli: Run) -> None:
    """A password that is not UTF-8 (file or variable) is one line and exit 4, never a traceback or a lossy decode."""
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    bad = tmp_path / "bad.pw"
    bad.write_bytes(b"\xff\xfe\n")
    bad.chmod(0o600)
    r = run_cli("keygen", "--encrypt", "--password-file", str(bad), "-s", str(sk), "-p", str(pk))
    _one_line_and_code(r, 4)
    assert "not valid UTF-8" in r.stderr and not sk.exists()
    r = run_cli("keygen", "--encrypt", "-s", str(sk), "-p", str(pk), env={"DURI_INTEGRITY_PASSWORD": "\udcff"})
    _one_line_and_code(r, 4)
    assert "not valid UTF-8" in r.stderr and not sk.exists()


def test_undecodable_bytes_in_arguments_are_escaped(tree: Path, tmp_path: Path, run_cli: Run) -> None:
    """A path argument with a byte that is not UTF-8 (0x9b is CSI to 8-bit terminals) is printed as \\x9b."""
    out = os.fsdecode(os.fsencode(tmp_path) + b"/m\x9b.json")
    r = run_cli("build", str(tree), "-m", out)
    assert r.returncode == 0, r.stderr
    assert "m\\x9b.json" in r.stdout


def test_verify_side_refuses_a_label_ending_in_a_newline(tree: Path) -> None:
    """The decoder refuses release "v1\\n" (a "$" anchor once let a final newline through)."""
    from duri_integrity.build import build_manifest
    from duri_integrity.errors import ManifestError
    from duri_integrity.manifest import decode_manifest

    data = build_manifest(str(tree), deployment="svc", release="v1").data
    assert decode_manifest(data).release == "v1"  # the unedited bytes decode
    with pytest.raises(ManifestError, match="release"):
        decode_manifest(data.replace(b'"release":"v1"', b'"release":"v1\\n"', 1))


def test_text_output_counts_problems_beyond_the_report_list(signed: Signed, run_cli: Run) -> None:
    """With the report's problem list cut (--max-problems), the text still counts every problem."""
    for i in range(80):
        (signed.root / f"added-{i:02}").write_text("x")
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--max-problems", "60")
    assert r.returncode == 1
    assert "... and 30 more problems (use --json --max-problems 0 for all)" in r.stdout
