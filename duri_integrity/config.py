"""Settings: explicit arguments > environment variables > one config file the operator chose.

Who may write each source decides whether it may influence trust. Arguments and
the environment belong to whoever runs the tool. The config file is only ever
one the operator named (``--config``, ``config_file=``, ``DURI_INTEGRITY_CONFIG``)
or the system file ``/etc/duri-integrity/config.toml``; nothing is discovered
from the working directory, which deploy scripts and services often run inside
the release (whose own ``pyproject.toml`` is part of the tree by construction).
A config file must be a regular file that only its owner (this user or root) can
write, in directories only they can write, and never inside the tree it verifies.
"""

import os
from collections.abc import Mapping
from typing import Any

import msgspec

from .errors import ConfigError, IntegrityError

__all__ = [
    "ENV_PREFIX",
    "MANIFEST_NAME",
    "OWN_FILES",
    "SYSTEM_DIR",
    "Settings",
    "load_config_file",
    "manifest_paths",
    "resolve_settings",
    "signature_path_for",
]

ENV_PREFIX = "DURI_INTEGRITY_"
SYSTEM_DIR = "/etc/duri-integrity"
"""Where the host's own config.toml, trusted-keys.d/ and revoked-keys.d/ live (root's to write)."""
MANIFEST_NAME = "MANIFEST.json"
OWN_FILES = (MANIFEST_NAME, MANIFEST_NAME + ".minisig")
"""The conventional in-tree manifest and signature: never part of the tree they describe."""
_MAX_CONFIG_BYTES = 1 << 20


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
    deployment: str | None = None
    """The deployment (service) this host runs, or a build is for; manifests for another are refused."""
    cache_dir: str | None = None
    state_dir: str | None = None
    """Where rollback high-water marks live; "none" turns rollback protection off."""
    allow_rollback_to: str | None = None
    """The one older release the operator approves: its serial, or LABEL@SERIAL."""
    revoked_keys: list[str] | None = None
    clock_skew: int | None = None
    """Seconds a manifest's creation time may lie in the future (and expiry be stretched)."""
    token_file: str | None = None
    """serve: the file holding the status endpoint's bearer token (after the option and the environment)."""


_PATH_KEYS = ("root", "manifest", "signature", "secret_key", "cache_dir", "state_dir", "token_file")
_ENV_KEYS = {
    "root": "ROOT",
    "manifest": "MANIFEST",
    "signature": "SIGNATURE",
    "public_key": "PUBLIC_KEY",
    "secret_key": "SECRET_KEY",
    "workers": "WORKERS",
    "release": "RELEASE",
    "deployment": "DEPLOYMENT",
    "cache_dir": "CACHE_DIR",
    "state_dir": "STATE_DIR",
    "allow_rollback_to": "ALLOW_ROLLBACK_TO",
    "revoked_keys": "REVOKED_KEYS",
    "clock_skew": "CLOCK_SKEW",
}


def system_path(name: str, env: Mapping[str, str] | None = None) -> str:
    """A path in the system directory; DURI_INTEGRITY_SYSTEM_DIR moves it (for tests and chroots)."""
    env = os.environ if env is None else env
    return os.path.join(env.get(ENV_PREFIX + "SYSTEM_DIR") or SYSTEM_DIR, name)


def config_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The config file to read: the one named, else DURI_INTEGRITY_CONFIG, else the system file if present."""
    named = explicit or env.get(ENV_PREFIX + "CONFIG") or None
    if named is not None:
        return named
    system = system_path("config.toml", env)
    return system if os.path.lexists(system) else None


def load_config_file(path: str) -> Settings:
    """Read one config file: ``[tool.duri-integrity]`` of a pyproject.toml, else the top-level keys."""
    import tomllib

    from .files import check_file_dirs, read_file

    try:
        check_file_dirs(path, "config file")  # as named and as resolved, like a key file
        data = read_file(path, _MAX_CONFIG_BYTES, "config file", private=True)
    except IntegrityError as exc:
        raise ConfigError(str(exc)) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    table: Any = doc.get("tool", {}).get("duri-integrity", {}) if os.path.basename(path) == "pyproject.toml" else doc
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
    return _relative_to(settings, os.path.dirname(os.path.abspath(path)))


def _relative_to(settings: Settings, base: str) -> Settings:
    """Make a config file's relative paths relative to the file's own directory."""
    from .keys import is_inline_key

    updates: dict[str, Any] = {}
    for key in _PATH_KEYS:
        value = getattr(settings, key)
        if value is not None and not (key == "state_dir" and _is_off(value)):
            updates[key] = os.path.join(base, value)
    if settings.public_key is not None:
        updates["public_key"] = [k if is_inline_key(k) else os.path.join(base, k) for k in settings.public_key]
    if settings.revoked_keys is not None:
        updates["revoked_keys"] = [k if is_inline_key(k) else os.path.join(base, k) for k in settings.revoked_keys]
    return msgspec.structs.replace(settings, **updates)


def _is_off(value: str) -> bool:
    return value == "none"  # exactly: a typo must not switch protection off


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
    overrides: Settings | None = None,
    *,
    env: Mapping[str, str] | None = None,
    use_config_file: bool = True,
    config_file: str | None = None,
) -> tuple[Settings, str | None]:
    """Merge explicit settings over the environment over the config file; return it and the file used."""
    env = os.environ if env is None else env
    layers = [overrides or Settings(), _from_env(env)]
    path = config_path(config_file, env) if use_config_file or config_file else None
    if path is not None:
        layers.append(load_config_file(path))
    merged: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        for layer in layers:
            value = getattr(layer, field)
            if value is not None:
                merged[field] = value
                break
    settings = Settings(**merged)
    _validate(settings)
    return settings, path


def _validate(settings: Settings) -> None:
    if settings.workers is not None and not 1 <= settings.workers <= 256:
        raise ConfigError(f"workers must be between 1 and 256, got {settings.workers}")
    if settings.clock_skew is not None and not 0 <= settings.clock_skew <= 86400:
        raise ConfigError(f"clock_skew must be between 0 and 86400 seconds, got {settings.clock_skew}")
    for field in Settings.__struct_fields__:
        value = getattr(settings, field)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ConfigError(f"{field} contains a NUL byte")


def state_disabled(settings: Settings) -> bool:
    """True when the operator switched rollback protection off explicitly (state directory "none")."""
    return settings.state_dir is not None and _is_off(settings.state_dir)


def manifest_paths(settings: Settings, root: str) -> tuple[str, str]:
    """(manifest path, signature path): configured, or the conventional ones in the root."""
    manifest = settings.manifest or os.path.join(root, MANIFEST_NAME)
    return manifest, settings.signature or signature_path_for(manifest)
