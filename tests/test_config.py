"""Settings: explicit arguments > environment > one config file the operator named (never the cwd)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from duri_integrity import verify_integrity
from duri_integrity.config import Settings, load_config_file, resolve_settings
from duri_integrity.errors import ConfigError

from .conftest import Signed


def _config(tmp_path: Path, text: str, name: str = "duri-integrity.toml") -> Path:
    d = tmp_path / "conf"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d / name


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit value beats the environment, which beats the config file."""
    cfg = _config(tmp_path, 'root = "from-file"\nmanifest = "m-file"\nworkers = 3\n')
    monkeypatch.setenv("DURI_INTEGRITY_MANIFEST", "m-env")
    monkeypatch.setenv("DURI_INTEGRITY_WORKERS", "2")
    s, path = resolve_settings(Settings(workers=1), config_file=str(cfg))
    assert path == str(cfg)
    assert s.root == str(cfg.parent / "from-file")  # relative to the config file
    assert s.manifest == "m-env"
    assert s.workers == 1


def test_no_config_is_discovered_in_the_working_directory(signed: Signed) -> None:
    """duri-integrity.toml and pyproject.toml in the cwd are never read (the cwd may be the tree)."""
    (Path.cwd() / "duri-integrity.toml").write_text('state_dir = "none"\nworkers = [')
    (Path.cwd() / "pyproject.toml").write_text('[tool.duri-integrity]\nroot = "/nonexistent"\n')
    s, path = resolve_settings()
    assert path is None and s.root is None and s.state_dir != "none"
    assert signed.verify().status == "VERIFIED"


def test_pyproject_table_when_named(tmp_path: Path) -> None:
    """A pyproject.toml named explicitly contributes its [tool.duri-integrity] table, dashed or not."""
    cfg = _config(tmp_path, '[project]\nname = "svc"\n[tool.duri-integrity]\npublic-key = "a.pub"\n', "pyproject.toml")
    s = load_config_file(str(cfg))
    assert s.public_key == [str(cfg.parent / "a.pub")]
    assert load_config_file(str(_config(tmp_path, '[project]\nname = "x"\n', "pyproject.toml"))) == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root = ", "not valid TOML"),
        ("roots = 'x'", "unknown field"),
        ("workers = 'many'", "Expected `int"),
        ("workers = 0", "between 1 and 256"),
        ("root = 5", "Expected `str"),
        ('root = "a\\u0000b"', "NUL"),
        ("public_key = [1]", "Expected `str"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    """A bad config file raises ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=message):
        resolve_settings(config_file=str(_config(tmp_path, text)))


def test_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric DURI_INTEGRITY_WORKERS is a ConfigError."""
    monkeypatch.setenv("DURI_INTEGRITY_WORKERS", "lots")
    with pytest.raises(ConfigError, match="WORKERS"):
        resolve_settings()


def test_config_from_environment_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DURI_INTEGRITY_CONFIG names the config file; a missing one is an error."""
    monkeypatch.setenv("DURI_INTEGRITY_CONFIG", str(_config(tmp_path, 'release = "r1"\n')))
    assert resolve_settings()[0].release == "r1"
    monkeypatch.setenv("DURI_INTEGRITY_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        resolve_settings()


def test_system_config_is_read(tmp_path: Path) -> None:
    """With nothing named, the system config.toml (DURI_INTEGRITY_SYSTEM_DIR here) is read."""
    etc = Path(os.environ["DURI_INTEGRITY_SYSTEM_DIR"])
    etc.mkdir()
    (etc / "config.toml").write_text('deployment = "from-etc"\n')
    s, path = resolve_settings(env={"DURI_INTEGRITY_SYSTEM_DIR": str(etc)})
    assert s.deployment == "from-etc" and path == str(etc / "config.toml")


@pytest.mark.parametrize("unsafe", ["world-writable file", "group-writable dir", "other owner", "fifo"])
def test_unsafe_config_files_are_refused(tmp_path: Path, unsafe: str) -> None:
    """A config file others could write, another user's, or not a regular file, is refused."""
    cfg = _config(tmp_path, 'release = "x"\n')
    if unsafe == "world-writable file":
        cfg.chmod(0o666)
    elif unsafe == "group-writable dir":
        cfg.parent.chmod(0o775)
    elif unsafe == "other owner":
        os.chown(cfg, 65534, 65534)
    else:
        cfg.unlink()
        os.mkfifo(cfg)
    with pytest.raises(ConfigError, match=r"writable by group|another user|not a regular file"):
        resolve_settings(config_file=str(cfg))


def test_config_linked_from_a_shared_directory_is_refused(tmp_path: Path) -> None:
    """A config file reached through a symlink is refused when the directory it resolves into is shared."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "config.toml").write_text('release = "x"\n')
    shared.chmod(0o775)
    private = tmp_path / "private"
    private.mkdir()
    (private / "config.toml").symlink_to(shared / "config.toml")
    with pytest.raises(ConfigError, match=r"directory of config file .* writable by group"):
        resolve_settings(config_file=str(private / "config.toml"))


def test_verify_with_no_arguments_uses_environment(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_integrity() with no arguments works from DURI_INTEGRITY_* variables."""
    monkeypatch.setenv("DURI_INTEGRITY_ROOT", str(signed.root))
    monkeypatch.setenv("DURI_INTEGRITY_PUBLIC_KEY", str(signed.keys.public))
    r = verify_integrity()
    assert r["status"] == "VERIFIED", r["summary"]
    assert r["integrity_verified"] is True and r["config_file"] is None


def test_verify_names_the_config_file_used(signed: Signed, tmp_path: Path) -> None:
    """verify_integrity(config_file=...) uses it, and the report says which file that was."""
    cfg = _config(tmp_path, f'root = "{signed.root}"\npublic_key = ["{signed.keys.public}"]\n')
    r = verify_integrity(config_file=cfg)
    assert r.status == "VERIFIED" and r.config_file == str(cfg)


def test_config_inside_the_tree_is_refused(signed: Signed) -> None:
    """A config file inside the tree it verifies is never trusted (the tree would vouch for itself)."""
    cfg = signed.root / "data" / "duri.toml"
    cfg.write_text('state_dir = "none"\n')
    r = signed.verify(config_file=str(cfg))
    assert r.status == "UNTRUSTED" and r.reason_code == "trust_anchor_in_tree"


def test_inline_public_key_in_environment(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment may carry the base64 public key itself (as a CI secret would)."""
    monkeypatch.setenv("DURI_INTEGRITY_PUBLIC_KEY", signed.keys.public.read_text().splitlines()[1])
    assert verify_integrity(signed.root).status == "VERIFIED"


def test_bad_config_becomes_error_report(signed: Signed, tmp_path: Path) -> None:
    """A broken config file is an operational failure: an ERROR report, not an exception."""
    r = verify_integrity(signed.root, public_keys=str(signed.keys.public), config_file=_config(tmp_path, "workers = ["))
    assert r.status == "ERROR" and "not valid TOML" in r.summary and r.reason_code == "config_error"
