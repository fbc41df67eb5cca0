"""Settings resolution: explicit arguments > environment variables > config file.

The config file is ``duri-integrity.toml`` (top-level keys) or the
``[tool.duri-integrity]`` table of ``pyproject.toml``, looked up in the working
directory, or the file named by ``DURI_INTEGRITY_CONFIG``. Relative paths in a
config file are relative to that file's directory.
"""

import os
from collections.abc import Mapping
from typing import Any

import msgspec

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "MANIFEST_NAME",
    "OWN_FILES",
    "SYSTEM_KEY_DIR",
    "Settings",
    "load_config_file",
    "manifest_paths",
    "resolve_settings",
    "signature_path_for",
]

ENV_PREFIX = "DURI_INTEGRITY_"
SYSTEM_KEY_DIR = "/etc/duri-integrity/trusted-keys.d"
MANIFEST_NAME = "MANIFEST.json"
OWN_FILES = (MANIFEST_NAME, MANIFEST_NAME + ".minisig")
"""The conventional in-tree manifest and signature: never part of the tree they describe."""


def signature_path_for(manifest_path: str) -> str:
    """minisign's own convention (FILE.minisig), so ``minisign -Vm FILE`` finds it."""
    return manifest_path + ".minisig"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting a command may use; None means "not set here"."""

    root: str | None = None
    manifest: str | None = None
    signature: str | None = None
    public_key: list[str] | None = None
    secret_key: str | None = None
    exclude: list[str] | None = None
    workers: int | None = None
    release: str | None = None
    cache_dir: str | None = None
    state_dir: str | None = None
    """Where rollback high-water marks live; "none" turns rollback protection off."""
    allow_rollback_to: str | None = None
    """A release label or serial the operator approves rolling back to."""
    revoked_keys: list[str] | None = None
    clock_skew: int | None = None
    """Seconds a manifest's creation time may lie in the future (and expiry be stretched)."""


_PATH_KEYS = ("root", "manifest", "signature", "secret_key", "cache_dir", "state_dir")
_ENV_KEYS = {
    "root": "ROOT",
    "manifest": "MANIFEST",
    "signature": "SIGNATURE",
    "public_key": "PUBLIC_KEY",
    "secret_key": "SECRET_KEY",
    "workers": "WORKERS",
    "release": "RELEASE",
    "cache_dir": "CACHE_DIR",
    "state_dir": "STATE_DIR",
    "allow_rollback_to": "ALLOW_ROLLBACK_TO",
    "revoked_keys": "REVOKED_KEYS",
    "clock_skew": "CLOCK_SKEW",
}


def _find_config_file(cwd: str) -> tuple[str, bool] | None:
    explicit = os.environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"{ENV_PREFIX}CONFIG names {explicit!r}, which is not a file")
        return explicit, os.path.basename(explicit) == "pyproject.toml"
    own = os.path.join(cwd, "duri-integrity.toml")
    if os.path.isfile(own):
        return own, False
    pyproject = os.path.join(cwd, "pyproject.toml")
    if os.path.isfile(pyproject):
        return pyproject, True
    return None


def load_config_file(cwd: str | None = None) -> tuple[Settings, str | None]:
    """Read the config file, if any; return its settings and its path."""
    import tomllib

    found = _find_config_file(cwd or os.getcwd())
    if found is None:
        return Settings(), None
    path, is_pyproject = found
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    table: Any = doc.get("tool", {}).get("duri-integrity") if is_pyproject else doc
    if table is None:
        return Settings(), None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.duri-integrity] must be a table")
    table = {k.replace("-", "_"): v for k, v in table.items()}
    for listed in ("public_key", "revoked_keys"):
        if isinstance(table.get(listed), str):
            table[listed] = [table[listed]]
    try:
        settings = msgspec.convert(table, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    updates: dict[str, Any] = {}
    for key in _PATH_KEYS:
        value = getattr(settings, key)
        if value is not None:
            updates[key] = os.path.join(base, value)
    if settings.public_key is not None:
        updates["public_key"] = [
            k if (k.startswith("RW") and len(k) == 56) else os.path.join(base, k) for k in settings.public_key
        ]
    if settings.revoked_keys is not None:
        updates["revoked_keys"] = [os.path.join(base, k) for k in settings.revoked_keys]
    if settings.state_dir is not None and settings.state_dir.strip().lower() in ("none", "off"):
        updates["state_dir"] = "none"  # not a path: do not make it relative to the file
    return msgspec.structs.replace(settings, **updates), path


def _from_env(env: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {}
    for key, suffix in _ENV_KEYS.items():
        raw = env.get(ENV_PREFIX + suffix)
        if raw is None or raw == "":
            continue
        if key in ("public_key", "revoked_keys"):
            values[key] = [p for p in raw.split(os.pathsep) if p]
        elif key in ("workers", "clock_skew"):
            try:
                values[key] = int(raw)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{suffix}={raw!r} is not a whole number") from None
        else:
            values[key] = raw
    return Settings(**values)


def resolve_settings(
    overrides: Settings | None = None, *, env: Mapping[str, str] | None = None, use_config_file: bool = True
) -> tuple[Settings, str | None]:
    """Merge explicit settings over the environment over the config file."""
    layers = [overrides or Settings(), _from_env(os.environ if env is None else env)]
    config_path = None
    if use_config_file:
        file_settings, config_path = load_config_file()
        layers.append(file_settings)
    merged: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        for layer in layers:
            value = getattr(layer, field)
            if value is not None:
                merged[field] = value
                break
    settings = Settings(**merged)
    if settings.workers is not None and not 1 <= settings.workers <= 256:
        raise ConfigError(f"workers must be between 1 and 256, got {settings.workers}")
    if settings.clock_skew is not None and not 0 <= settings.clock_skew <= 86400:
        raise ConfigError(f"clock_skew must be between 0 and 86400 seconds, got {settings.clock_skew}")
    return settings, config_path


def manifest_paths(settings: Settings, root: str) -> tuple[str, str]:
    """(manifest path, signature path): configured, or the conventional ones in the root."""
    manifest = settings.manifest or os.path.join(root, MANIFEST_NAME)
    return manifest, settings.signature or signature_path_for(manifest)
