"""The command line, through click's CliRunner and through the real console script."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from duri_integrity.cli import main

from .conftest import Keys, Signed, assert_one_clear_line, console_script

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_help_documents_exit_codes() -> None:
    """--help of the group and of verify lists every exit code."""
    for args in (["--help"], ["verify", "--help"]):
        out = CliRunner().invoke(main, args).output
        for code in ("0  VERIFIED", "1  FAILED", "2  usage", "3  UNTRUSTED", "4  ERROR"):
            assert code in out


def test_keygen_build_verify_end_to_end(tree: Path, tmp_path: Path, run_cli: Run) -> None:
    """keygen, build --secret-key and verify work together as real processes."""
    k = tmp_path / "k"
    k.mkdir()
    r = run_cli("keygen", "-s", str(k / "s.key"), "-p", str(k / "s.pub"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((k / "s.key").stat().st_mode) == 0o600
    r = run_cli("build", str(tree), "--secret-key", str(k / "s.key"), "--release", "v2", "-x", "*.log")
    assert r.returncode == 0, r.stderr
    assert "signed:" in r.stdout
    r = run_cli("verify", str(tree), "--public-key", str(k / "s.pub"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("VERIFIED: ")
    r = run_cli("verify", str(tree), "-p", str(k / "s.pub"), "-q")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_verify_json_is_the_report(signed: Signed, run_cli: Run) -> None:
    """--json prints exactly the report's to_dict() on stdout."""
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["status"] == "VERIFIED" and d["integrity_verified"] is True and d["recommendation"] == "proceed"


def test_failed_lists_problems_and_exits_1(signed: Signed, run_cli: Run) -> None:
    """A tampered tree exits 1 and lists each problem before the summary."""
    (signed.root / "app" / "main.py").write_text("x\n")
    (signed.root / "new.txt").write_text("x\n")
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("MODIFIED") and "app/main.py" in lines[0]
    assert lines[1].startswith("ADDED") and "new.txt" in lines[1]
    assert lines[-1].startswith("FAILED: 2 of ")
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["integrity_verified"] is False


def test_long_problem_lists_are_cut_at_50(signed: Signed) -> None:
    """Human output shows the first 50 problems and a count of the rest."""
    for i in range(60):
        (signed.root / f"added-{i:02}").write_text("x")
    res = CliRunner().invoke(main, ["verify", str(signed.root), "-p", str(signed.keys.public)])
    assert res.exit_code == 1
    assert sum(1 for ln in res.output.splitlines() if ln.startswith("ADDED")) == 50
    assert "... and 10 more problems" in res.output


@pytest.mark.parametrize(
    ("setup", "code", "needle"),
    [
        (lambda s: s.manifest.unlink(), 3, "cannot read manifest"),
        (lambda s: s.signature.unlink(), 3, "cannot read signature"),
        (lambda s: s.manifest.write_bytes(b"{}"), 3, "does not match"),
        (lambda s: shutil.rmtree(s.root), 4, "cannot use root"),
    ],
)
def test_untrusted_and_error_exit_codes(
    signed: Signed, run_cli: Run, setup: Callable[[Signed], object], code: int, needle: str
) -> None:
    """UNTRUSTED exits 3 and ERROR exits 4, each with one clear line on stderr."""
    setup(signed)
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public))
    assert r.returncode == code
    assert_one_clear_line(r.stderr)
    assert needle in r.stderr
    assert r.stdout == ""


def test_usage_error_exits_2(run_cli: Run) -> None:
    """An unknown option is a usage error (exit 2)."""
    r = run_cli("verify", "--no-such-option")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args_for",
    [
        lambda t, k: ["build", str(t), "--secret-key", str(k.public)],  # a public key is not a secret key
        lambda t, k: ["build", str(t), "--secret-key", str(t.parent / "missing.key")],
        lambda t, k: ["build", str(t.parent / "no-tree")],
        lambda t, k: ["sign", str(t / "no-manifest.json"), "--secret-key", str(k.secret)],
        lambda t, k: ["keygen", "-s", str(k.secret), "-p", str(k.public)],  # exists already
        lambda t, k: ["build", str(t), "--secret-key", str(t / "inside.key")],
    ],
)
def test_operational_errors_are_one_line_exit_4(
    tree: Path, keys: Keys, run_cli: Run, args_for: Callable[[Path, Keys], list[str]]
) -> None:
    """Bad keys, missing inputs and refused operations end in one clear line and exit 4."""
    shutil.copy(keys.secret, tree / "inside.key")
    r = run_cli(*args_for(tree, keys))
    assert r.returncode == 4, r.stderr
    assert_one_clear_line(r.stderr)


def test_build_refuses_secret_key_in_tree(tree: Path, keys: Keys, run_cli: Run) -> None:
    """A file that is a minisign secret key anywhere in the tree stops the build."""
    shutil.copy(keys.secret, tree / "app" / "oops.txt")
    r = run_cli("build", str(tree))
    assert r.returncode == 4
    assert "secret key" in r.stderr and "app/oops.txt" in r.stderr


def test_build_refuses_insecure_secret_key(tree: Path, keys: Keys, run_cli: Run) -> None:
    """Signing refuses a secret key readable by others unless --allow-insecure-key is given."""
    keys.secret.chmod(0o644)
    r = run_cli("build", str(tree), "-s", str(keys.secret))
    assert r.returncode == 4 and "chmod 600" in r.stderr
    r = run_cli("build", str(tree), "-s", str(keys.secret), "--allow-insecure-key")
    assert r.returncode == 0, r.stderr


def test_sign_command(tree: Path, keys: Keys, run_cli: Run) -> None:
    """`sign` signs an existing manifest so that verify accepts it."""
    assert run_cli("build", str(tree)).returncode == 0
    assert not (tree / "MANIFEST.json.minisig").exists()
    r = run_cli("sign", str(tree / "MANIFEST.json"), "--secret-key", str(keys.secret))
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", str(tree), "-p", str(keys.public)).returncode == 0
    # rebuilding without a key leaves the old signature: the build says it no longer matches
    (tree / "new.txt").write_text("x")
    r = run_cli("build", str(tree))
    assert r.returncode == 0 and "is from an earlier build and does not match" in r.stderr


def test_encrypted_key_with_password_file(tree: Path, tmp_path: Path, run_cli: Run) -> None:
    """keygen --encrypt and build read the password from --password-file."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)  # a password file others can read is refused, as a secret key is
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    r = run_cli("keygen", "--encrypt", "--password-file", str(pw), "-s", str(sk), "-p", str(pk))
    assert r.returncode == 0, r.stderr
    r = run_cli("build", str(tree), "-s", str(sk))
    assert r.returncode == 4 and "no password" in r.stderr
    r = run_cli("build", str(tree), "-s", str(sk), "--password-file", str(pw))
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", str(tree), "-p", str(pk)).returncode == 0


def test_unreadable_file_is_reported_not_swallowed(signed: Signed, run_cli: Run) -> None:
    """A file the verifier cannot read is a problem (exit 1), never success."""
    target = signed.root / "app" / "main.py"
    target.chmod(0)
    args = ["verify", str(signed.root), "-p", str(signed.keys.public), "--json"]
    if os.geteuid() == 0:
        # root reads everything; drop the capabilities that let it, as a service user would lack them
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv not available to drop root's read override")
        exe = console_script()
        assert exe is not None
        r = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", exe, *args],
            capture_output=True,
            text=True,
            check=False,
        )
    else:
        r = run_cli(*args)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert {(p["path"], p["kind"]) for p in d["problems"]} >= {("app/main.py", "unreadable")}


def test_config_from_environment(signed: Signed, run_cli: Run) -> None:
    """`verify` with no arguments takes root and key from DURI_INTEGRITY_* variables."""
    env = {"DURI_INTEGRITY_ROOT": str(signed.root), "DURI_INTEGRITY_PUBLIC_KEY": str(signed.keys.public)}
    r = run_cli("verify", env=env)
    assert r.returncode == 0, r.stderr


def test_bad_config_file_exits_4(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """A malformed config file is one clear line and exit 4."""
    (tmp_path / "duri-integrity.toml").write_text("workers = [")
    cfg = str(tmp_path / "duri-integrity.toml")
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--config", cfg)
    assert r.returncode == 4
    assert_one_clear_line(r.stderr)


def test_python_dash_m_and_version(run_cli: Run) -> None:
    """`python -m duri_integrity` is the same command; --version prints the version."""
    from duri_integrity import __version__

    r = subprocess.run(
        [sys.executable, "-m", "duri_integrity", "--version"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and __version__ in r.stdout
    assert __version__ in run_cli("--version").stdout


def test_demo_runs_and_catches_the_change(run_cli: Run, tmp_path: Path) -> None:
    """The embedded demo verifies, tampers, and shows the failure, exiting 0."""
    r = run_cli("demo", "--keep", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "VERIFIED: " in r.stdout and "FAILED: " in r.stdout
    assert "rollback_integrity" in r.stdout
    assert (tmp_path / "demo" / "release" / "MANIFEST.json.minisig").exists()


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the console script with stderr on a pseudo-terminal; return (code, stdout, terminal output)."""
    import pty

    exe = console_script()
    assert exe is not None
    master, slave = pty.openpty()
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=slave, env={**os.environ, **env})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate()
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(signed: Signed, run_cli: Run) -> None:
    """A progress bar appears on a terminal for a slow run, and never with -q, --json or a pipe."""
    env = {"DURI_INTEGRITY_PROGRESS_DELAY": "0", "DURI_INTEGRITY_STATE_DIR": "none"}
    base = ["verify", str(signed.root), "-p", str(signed.keys.public)]
    code, out, tty = _run_on_a_terminal(base, env)
    assert code == 0 and "hashing [" in tty and "files" in tty and out.splitlines()[-1].startswith("VERIFIED")
    for extra in (["-q"], ["--json"]):
        code, _, tty = _run_on_a_terminal([*base, *extra], env)
        assert code == 0 and "hashing [" not in tty
    r = run_cli(*base, env=env)
    assert "hashing [" not in r.stderr
    code, _, tty = _run_on_a_terminal(base, {**env, "DURI_INTEGRITY_PROGRESS_DELAY": "60"})
    assert "hashing [" not in tty  # fast runs stay quiet


def test_encrypted_key_prompts_once_on_a_terminal(tree: Path, tmp_path: Path) -> None:
    """Building with an encrypted key asks for the password once, on the terminal, and signs."""
    import pty
    import select

    from duri_integrity.keys import generate_keypair

    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    generate_keypair(str(sk), str(pk), password="hunter2-hunter2")
    exe = console_script()
    assert exe is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")}
    pid, master = pty.fork()  # the child gets the pty as its controlling terminal, as a person would
    if pid == 0:
        os.execve(exe, [exe, "build", str(tree), "-d", "svc", "-s", str(sk)], env)
    seen = b""
    answered = False
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, seen
        try:
            chunk = os.read(master, 1024)
        except OSError:  # EIO: the child has exited
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Password" in seen:
            os.write(master, b"hunter2-hunter2\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert seen.count(b"Password") == 1 and b"signed:" in seen


def test_doctor_takes_verify_trust_options_with_the_same_spelling() -> None:
    """doctor accepts every option of verify that decides trust, spelt and typed as verify's (one shared list)."""
    from duri_integrity.cli.ops import doctor
    from duri_integrity.cli.verify import verify

    def options(command: click.Command) -> dict[str, tuple[str, str]]:
        return {p.name: (" ".join(p.opts), type(p.type).__name__) for p in command.params if p.name}

    shared = {k: v for k, v in options(verify).items() if k not in ("quick", "cache_dir", "workers", "as_json")}
    shared = {k: v for k, v in shared.items() if k not in ("quiet", "prometheus_textfile", "max_problems", "root")}
    doctors = options(doctor)
    assert shared and {k: doctors.get(k) for k in shared} == shared


def test_one_shot_commands_run_without_the_cycle_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console entry point switches the cyclic collector off before the command runs (it ends with os._exit)."""
    import gc

    import duri_integrity.cli as cli_mod
    from duri_integrity import _console

    seen: list[bool] = []
    monkeypatch.setattr(cli_mod, "run", lambda: seen.append(gc.isenabled()))
    try:
        _console.run()
    finally:
        gc.enable()
    assert seen == [False]


def test_serve_switches_the_cycle_collector_back_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve runs for days: it collects cycles again, whatever the entry point did."""
    import gc

    monkeypatch.setenv("DURI_INTEGRITY_STATUS_TOKEN", "t" * 32)
    gc.disable()
    try:
        res = CliRunner().invoke(main, ["serve", str(tmp_path), "--bind", "256.0.0.1:1"])
        assert gc.isenabled()
    finally:
        gc.enable()
    assert res.exit_code != 0


@pytest.mark.parametrize("where", ["import", "run"])
def test_ctrl_c_anywhere_is_interrupted_and_130_never_a_traceback(where: str) -> None:
    """Ctrl-C while the command line interface loads, or where no command handles it, is one line and exit 130
    (an outside attack saw a traceback and exit 1, which means FAILED, when it landed in the imports)."""
    child = (
        "import sys\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'duri_integrity.cli': raise KeyboardInterrupt\n"
        f"if {where!r} == 'import': sys.meta_path.insert(0, Stop())\n"
        "else:\n"
        "    import duri_integrity.cli as cli\n"
        "    def run(): raise KeyboardInterrupt\n"
        "    cli.run = run\n"
        "from duri_integrity import _console\n"
        "_console.run()\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", child], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "duri-integrity: interrupted\n"
