"""Settings rule by rule: where each source is looked for, how values are read, merged and bounded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import config
from duri_integrity.config import Settings, load_config_file, resolve_settings
from duri_integrity.errors import ConfigError


def _file(tmp_path: Path, text: bytes | str, name: str = "c.toml") -> Path:
    d = tmp_path / "conf"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_system_paths_default_to_etc() -> None:
    """Without DURI_INTEGRITY_SYSTEM_DIR the system files are under /etc/duri-integrity."""
    assert config.system_path("config.toml", {}) == "/etc/duri-integrity/config.toml"
    assert config.system_path("x", {"DURI_INTEGRITY_SYSTEM_DIR": ""}) == "/etc/duri-integrity/x"
    assert config.system_path("x", {"DURI_INTEGRITY_SYSTEM_DIR": "/s"}) == "/s/x"


def test_config_path_order(tmp_path: Path) -> None:
    """The named file, else DURI_INTEGRITY_CONFIG, else the system file only if it exists (even as a link)."""
    env = {"DURI_INTEGRITY_SYSTEM_DIR": str(tmp_path)}
    assert config.config_path(None, env) is None
    assert config.config_path(None, {**env, "DURI_INTEGRITY_CONFIG": ""}) is None
    os.symlink(tmp_path / "nowhere", tmp_path / "config.toml")
    assert config.config_path(None, env) == str(tmp_path / "config.toml")
    assert config.config_path(None, {**env, "DURI_INTEGRITY_CONFIG": "/e.toml"}) == "/e.toml"
    assert config.config_path("/a.toml", {**env, "DURI_INTEGRITY_CONFIG": "/e.toml"}) == "/a.toml"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    """Every path setting in a config file is taken relative to the file's directory; inline keys are not."""
    inline = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
    cfg = _file(
        tmp_path,
        'root = "r"\nmanifest = "m"\nsignature = "s"\nsecret_key = "k"\ncache_dir = "c"\nstate_dir = "st"\n'
        f'public_key = ["p.pub", "{inline}", "/abs.pub"]\nrevoked_keys = ["rv", "{inline}"]\n',
    )
    s = load_config_file(str(cfg))
    d = str(cfg.parent)
    assert (s.root, s.manifest, s.signature, s.secret_key, s.cache_dir, s.state_dir) == tuple(
        os.path.join(d, x) for x in ("r", "m", "s", "k", "c", "st")
    )
    assert s.public_key == [os.path.join(d, "p.pub"), inline, "/abs.pub"]
    assert s.revoked_keys == [os.path.join(d, "rv"), inline]


def test_state_dir_none_in_a_file_stays_off(tmp_path: Path) -> None:
    """state_dir = "none" switches protection off instead of naming a directory."""
    s = load_config_file(str(_file(tmp_path, 'state_dir = "none"\n')))
    assert s.state_dir == "none" and config.state_disabled(s)


@pytest.mark.parametrize("lookalike", ["off", " OFF ", "None", " none"])
def test_a_lookalike_of_none_is_a_directory(tmp_path: Path, lookalike: str) -> None:
    """Only exactly "none" switches protection off: a look-alike is a path beside the file."""
    s = load_config_file(str(_file(tmp_path, f'state_dir = "{lookalike}"\n')))
    assert s.state_dir is not None and s.state_dir.endswith(lookalike) and not config.state_disabled(s)


def test_state_disabled_only_when_said() -> None:
    """No state_dir, or a real directory, keeps rollback protection on."""
    assert not config.state_disabled(Settings())
    assert not config.state_disabled(Settings(state_dir="/var/lib/x"))
    assert config.state_disabled(Settings(state_dir="none"))


def test_single_key_strings_become_lists(tmp_path: Path) -> None:
    """public_key and revoked_keys may be one string in a file; dashes in names are accepted."""
    s = load_config_file(str(_file(tmp_path, 'public-key = "a.pub"\nrevoked-keys = "r"\n')))
    assert s.public_key == [str(tmp_path / "conf" / "a.pub")] and s.revoked_keys == [str(tmp_path / "conf" / "r")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.toml", b"release = '\xff'\n", "is not UTF-8 text"),
        ("pyproject.toml", b'[tool]\nduri-integrity = "x"\n', "must be a table"),
    ],
)
def test_bad_config_contents(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """A non-UTF-8 file, or a pyproject whose duri-integrity entry is not a table, is refused."""
    with pytest.raises(ConfigError, match=message):
        load_config_file(str(_file(tmp_path, content, name)))


def test_top_level_keys_of_a_file_not_named_pyproject(tmp_path: Path) -> None:
    """Any other file name is read at top level (a [tool.duri-integrity] table there is an unknown field)."""
    assert load_config_file(str(_file(tmp_path, 'release = "r"\n', "pyproject.toml.bak"))).release == "r"
    with pytest.raises(ConfigError, match="unknown field"):
        load_config_file(str(_file(tmp_path, '[tool.duri-integrity]\nrelease = "r"\n', "other.toml")))


def test_every_environment_variable(tmp_path: Path) -> None:
    """Each DURI_INTEGRITY_* variable sets its setting; key lists split on ':' and skip empty parts."""
    env = {
        f"DURI_INTEGRITY_{k}": v
        for k, v in {
            "ROOT": "/r",
            "MANIFEST": "/m",
            "SIGNATURE": "/s",
            "PUBLIC_KEY": "/a.pub::/b.pub",
            "SECRET_KEY": "/k",
            "WORKERS": "7",
            "RELEASE": "v1",
            "DEPLOYMENT": "svc",
            "CACHE_DIR": "/c",
            "STATE_DIR": "/st",
            "ALLOW_ROLLBACK_TO": "v1@5",
            "REVOKED_KEYS": "/r1:/r2",
            "CLOCK_SKEW": "0",
            "SYSTEM_DIR": str(tmp_path),
        }.items()
    }
    s, path = resolve_settings(env=env)
    assert path is None
    assert s == Settings(
        root="/r",
        manifest="/m",
        signature="/s",
        public_key=["/a.pub", "/b.pub"],
        secret_key="/k",
        workers=7,
        release="v1",
        deployment="svc",
        cache_dir="/c",
        state_dir="/st",
        allow_rollback_to="v1@5",
        revoked_keys=["/r1", "/r2"],
        clock_skew=0,
    )


def test_empty_environment_variables_are_unset(tmp_path: Path) -> None:
    """An empty variable does not override the config file."""
    cfg = _file(tmp_path, 'release = "from-file"\nclock_skew = 5\n')
    env = {"DURI_INTEGRITY_RELEASE": "", "DURI_INTEGRITY_CLOCK_SKEW": "", "DURI_INTEGRITY_SYSTEM_DIR": str(tmp_path)}
    s, _ = resolve_settings(env=env, config_file=str(cfg))
    assert s.release == "from-file" and s.clock_skew == 5


def test_bad_clock_skew_in_environment() -> None:
    """A non-numeric DURI_INTEGRITY_CLOCK_SKEW is a usage error naming the variable."""
    with pytest.raises(ConfigError, match="DURI_INTEGRITY_CLOCK_SKEW='soon' is not a whole number"):
        resolve_settings(env={"DURI_INTEGRITY_CLOCK_SKEW": "soon"})


def test_each_field_comes_from_the_first_source_that_sets_it(tmp_path: Path) -> None:
    """Merging is per field: flags, then environment, then file, each filling what the others left."""
    cfg = _file(tmp_path, 'release = "file"\ndeployment = "file"\nworkers = 3\n')
    env = {
        "DURI_INTEGRITY_DEPLOYMENT": "env",
        "DURI_INTEGRITY_WORKERS": "2",
        "DURI_INTEGRITY_SYSTEM_DIR": str(tmp_path),
    }
    s, path = resolve_settings(Settings(workers=1), env=env, config_file=str(cfg))
    assert (s.workers, s.deployment, s.release, path) == (1, "env", "file", str(cfg))


def test_use_config_file_false_skips_only_the_implicit_file(tmp_path: Path) -> None:
    """use_config_file=False ignores the system file, but a file named explicitly is still read."""
    (tmp_path / "config.toml").write_text('release = "system"\n')
    env = {"DURI_INTEGRITY_SYSTEM_DIR": str(tmp_path)}
    assert resolve_settings(env=env, use_config_file=False) == (Settings(), None)
    assert resolve_settings(env=env)[0].release == "system"
    cfg = _file(tmp_path, 'release = "named"\n')
    assert resolve_settings(env=env, use_config_file=False, config_file=str(cfg))[0].release == "named"


@pytest.mark.parametrize(
    ("field", "value"), [("workers", 1), ("workers", 256), ("clock_skew", 0), ("clock_skew", 86400)]
)
def test_bounds_are_inclusive(field: str, value: int) -> None:
    """workers 1..256 and clock_skew 0..86400 are accepted at both ends."""
    one: dict[str, Any] = {field: value}  # the field is a parameter: its type is the field's
    s, _ = resolve_settings(Settings(**one), env={})
    assert getattr(s, field) == value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "workers must be between 1 and 256, got 0"),
        ("workers", 257, "got 257"),
        ("clock_skew", -1, "clock_skew must be between 0 and 86400 seconds, got -1"),
        ("clock_skew", 86401, "got 86401"),
    ],
)
def test_out_of_bounds_is_refused(field: str, value: int, message: str) -> None:
    """One past either end is a usage error naming the setting and the value."""
    one: dict[str, Any] = {field: value}  # the field is a parameter: its type is the field's
    with pytest.raises(ConfigError, match=message):
        resolve_settings(Settings(**one), env={})


@pytest.mark.parametrize("field", ["public_key", "revoked_keys", "exclude"])
def test_nul_in_a_list_is_refused(field: str) -> None:
    """A NUL byte in any list entry is refused, naming the setting."""
    one: dict[str, Any] = {field: ["ok", "b\x00d"]}  # the field is a parameter: its type is the field's
    with pytest.raises(ConfigError, match=f"{field} contains a NUL byte"):
        resolve_settings(Settings(**one), env={})


def test_manifest_and_signature_paths() -> None:
    """By default both are in the root; a configured manifest carries its signature; both can be named."""
    assert config.manifest_paths(Settings(), "/t") == ("/t/MANIFEST.json", "/t/MANIFEST.json.minisig")
    assert config.manifest_paths(Settings(manifest="/m/x.json"), "/t") == ("/m/x.json", "/m/x.json.minisig")
    assert config.manifest_paths(Settings(manifest="/m", signature="/s"), "/t") == ("/m", "/s")
    assert config.signature_path_for("a") == "a.minisig"


def test_config_file_size_is_bounded(tmp_path: Path) -> None:
    """A config file of exactly 1 MiB is read; one byte more is refused."""
    body = 'release = "r"\n'
    cfg = _file(tmp_path, body + "#" * ((1 << 20) - len(body) - 1) + "\n")
    assert load_config_file(str(cfg)).release == "r"
    cfg.write_text(body + "#" * ((1 << 20) - len(body)) + "\n")
    with pytest.raises(ConfigError, match="config file"):
        load_config_file(str(cfg))


def test_own_files_are_the_manifest_and_its_signature() -> None:
    """The in-tree files never part of the tree are exactly MANIFEST.json and MANIFEST.json.minisig."""
    assert config.OWN_FILES == ("MANIFEST.json", "MANIFEST.json.minisig")
