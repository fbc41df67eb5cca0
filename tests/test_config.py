"""Settings: explicit arguments > environment > config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from duri_integrity import verify_integrity
from duri_integrity.config import Settings, load_config_file, resolve_settings
from duri_integrity.errors import ConfigError

from .conftest import Signed


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit value beats the environment, which beats the config file."""
    (Path.cwd() / "duri-integrity.toml").write_text('root = "from-file"\nmanifest = "m-file"\nworkers = 3\n')
    monkeypatch.setenv("DURI_INTEGRITY_MANIFEST", "m-env")
    monkeypatch.setenv("DURI_INTEGRITY_WORKERS", "2")
    s, path = resolve_settings(Settings(workers=1))
    assert path is not None and path.endswith("duri-integrity.toml")
    assert s.root == str(Path.cwd() / "from-file")  # relative to the config file
    assert s.manifest == "m-env"
    assert s.workers == 1


def test_pyproject_table(tmp_path: Path) -> None:
    """[tool.duri-integrity] in pyproject.toml is read, with dashed or underscored keys."""
    (Path.cwd() / "pyproject.toml").write_text(
        '[project]\nname = "svc"\n[tool.duri-integrity]\npublic-key = "keys/a.pub"\nexclude = ["*.pyc"]\n'
    )
    s, _ = load_config_file()
    assert s.public_key == [str(Path.cwd() / "keys/a.pub")]
    assert s.exclude == ["*.pyc"]


def test_pyproject_without_table_is_ignored() -> None:
    """A pyproject.toml with no [tool.duri-integrity] table contributes nothing."""
    (Path.cwd() / "pyproject.toml").write_text('[project]\nname = "svc"\n')
    assert load_config_file() == (Settings(), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root = ", "not valid TOML"),
        ("roots = 'x'", "unknown field"),
        ("workers = 'many'", "Expected `int"),
        ("workers = 0", "between 1 and 256"),
    ],
)
def test_bad_config_file(text: str, message: str) -> None:
    """A bad config file raises ConfigError naming the file and the problem."""
    (Path.cwd() / "duri-integrity.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_settings()


def test_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric DURI_INTEGRITY_WORKERS is a ConfigError."""
    monkeypatch.setenv("DURI_INTEGRITY_WORKERS", "lots")
    with pytest.raises(ConfigError, match="WORKERS"):
        resolve_settings()


def test_explicit_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DURI_INTEGRITY_CONFIG names the config file; a missing one is an error."""
    cfg = tmp_path / "etc.toml"
    cfg.write_text('release = "r1"\n')
    monkeypatch.setenv("DURI_INTEGRITY_CONFIG", str(cfg))
    assert resolve_settings()[0].release == "r1"
    monkeypatch.setenv("DURI_INTEGRITY_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not a file"):
        resolve_settings()


def test_verify_with_no_arguments_uses_environment(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_integrity() with no arguments works from DURI_INTEGRITY_* variables."""
    monkeypatch.setenv("DURI_INTEGRITY_ROOT", str(signed.root))
    monkeypatch.setenv("DURI_INTEGRITY_PUBLIC_KEY", str(signed.keys.public))
    r = verify_integrity()
    assert r["status"] == "VERIFIED", r["summary"]
    assert r["integrity_verified"] is True


def test_verify_with_no_arguments_uses_config_file(signed: Signed) -> None:
    """verify_integrity() with no arguments works from the working directory's pyproject.toml."""
    (Path.cwd() / "pyproject.toml").write_text(
        f'[tool.duri-integrity]\nroot = "{signed.root}"\npublic_key = ["{signed.keys.public}"]\n'
    )
    assert verify_integrity().status == "VERIFIED"


def test_inline_public_key_in_environment(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment may carry the base64 public key itself (as a CI secret would)."""
    monkeypatch.setenv("DURI_INTEGRITY_PUBLIC_KEY", signed.keys.public.read_text().splitlines()[1])
    assert verify_integrity(signed.root).status == "VERIFIED"


def test_bad_config_becomes_error_report(signed: Signed) -> None:
    """A broken config file is an operational failure: an ERROR report, not an exception."""
    (Path.cwd() / "duri-integrity.toml").write_text("workers = [")
    r = verify_integrity(signed.root, public_keys=str(signed.keys.public))
    assert r.status == "ERROR" and "not valid TOML" in r.summary
