"""The pre-deploy checklist: every precondition of a successful verification, checked one by one.

Each check says OK or what to fix, so a deploy can be stopped before it starts
instead of rolled back after. The trust checks are the steps of the very
pipeline ``verify`` runs (:mod:`duri_integrity.trust`), in the same order with
the same inputs, and the last check is a full verification that records
nothing; so ``doctor`` cannot pass what ``verify`` refuses.
"""

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import msgspec

from .config import Settings
from .errors import IntegrityError, UntrustedError
from .keys import TrustedKeys
from .keyscan import ENTRY_LIMIT, KeyScan, RecordingExcluder, excluded_secret_keys
from .manifest import Manifest
from .state import StateStore
from .trust import (
    DEFAULT_CLOCK_SKEW,
    check_clock,
    check_comment,
    check_deployment,
    check_rollback,
    check_signature,
    decode,
    host_deployment,
    load_keys,
    open_store,
    parse_approval,
    read_signed,
)
from .walk import Walk, check_root, inside_root

__all__ = ["Check", "DoctorReport", "run_doctor"]

EXPIRY_WARNING = timedelta(days=7)
_CLOCK_TIMEOUT = 3.0


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str
    fix: str | None = None


class DoctorReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[Check]


class _Checklist:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, ok: bool, detail: str, fix: str | None = None) -> bool:
        self.checks.append(Check(name=name, ok=ok, detail=detail, fix=None if ok else fix))
        return ok

    def run(self, name: str, fix: str, step: Callable[[], str]) -> bool:
        """Run one step; its return value is the OK detail, an IntegrityError the failure."""
        try:
            return self.add(name, True, step())
        except IntegrityError as exc:
            return self.add(name, False, str(exc), fix)


def run_doctor(
    settings: Settings,
    *,
    config_file: str | None = None,
    secret_key: str | None = None,
    password: str | None = None,
    check_dirs: Sequence[str] = (),
    serving: bool = False,
) -> DoctorReport:
    """Run every check; never raises for an operational problem."""
    c = _Checklist()
    root_real: str | None = None

    def root_step() -> str:
        nonlocal root_real
        root_real = check_root(settings.root or ".")
        return root_real

    c.run("root", "give the release directory as ROOT (or DURI_INTEGRITY_ROOT)", root_step)
    if config_file is not None:
        c.run("config", "keep the config file outside the tree, owned by root", lambda: _config(root_real, config_file))
    m = _trust_checks(c, settings, root_real) if root_real is not None else None
    if secret_key:
        c.run(
            "secret key",
            "chmod 600 the key, keep it outside the tree, or give the right file or password",
            lambda: _secret_key(secret_key, password, settings, root_real),
        )
    if root_real is not None:
        c.run(
            "no secret keys around the tree",
            "move signing keys off the host",
            lambda: _no_keys_around(root_real, m.exclude if m is not None else [], secret_key),
        )
    c.run("clock synchronised", "enable NTP (timedatectl set-ntp true, or chrony)", _clock_synchronised)
    for directory in check_dirs:
        c.run(f"directory {directory}", f"chmod go-w {directory}, owned by root or this user", _dir_check(directory))
    if serving:
        c.run("status token", "set CANARY_TOKEN (16+ characters) or pass --token-file", _token)
    if root_real is not None:
        c.run(
            "tree matches the manifest",
            "redeploy the release, or investigate the changes listed",
            lambda: _full_verification(settings, config_file),
        )
    return DoctorReport(ok=all(x.ok for x in c.checks), checks=c.checks)


def _config(root_real: str | None, path: str) -> str:
    if root_real is not None and inside_root(root_real, path) is not None:
        raise IntegrityError(f"config file {path!r} is inside the tree being verified")
    return f"{path} (owned by root or this user, writable by no one else)"


def _trust_checks(c: _Checklist, settings: Settings, root_real: str) -> Manifest | None:
    """The trust pipeline, step by step, with the inputs verify would use; the manifest if trusted."""
    keys = _key_checks(c, settings, root_real)
    host = _host_checks(c, settings) if keys is not None else None
    if keys is None or host is None:
        return None
    m = _manifest_checks(c, settings, root_real, *keys)
    if m is None:
        return None
    store, deployment, approval = host
    now = datetime.now().astimezone()
    skew = DEFAULT_CLOCK_SKEW if settings.clock_skew is None else settings.clock_skew
    c.run(
        "clock",
        "check NTP here and on the build host; rebuild and sign if it expired",
        lambda: _manifest_clock(m.created, m.expires, now, lambda: check_clock(m, now, skew)),
    )
    c.run(
        "deployment",
        "deploy the release built for this deployment, or fix --deployment",
        lambda: _deployment_detail(m, deployment),
    )
    if store is not None and deployment is not None:
        c.run(
            "rollback",
            "deploy a newer release, or approve exactly this one with --allow-rollback-to "
            + (f"{m.release}@{m.serial}" if m.release else str(m.serial)),
            lambda: _rollback_detail(check_rollback(m, store.read(deployment), approval)),
        )
    return m


def _key_checks(c: _Checklist, settings: Settings, root_real: str) -> tuple[TrustedKeys, set[str]] | None:
    try:
        trusted, revoked = load_keys(settings, root_real)
    except IntegrityError as exc:
        c.add("trusted keys", False, str(exc), "install the release public key outside the tree (--public-key)")
        return None
    bad = sorted(set(trusted.key_ids) & revoked)
    detail = f"revoked yet trusted: {', '.join(bad)}" if bad else f"{len(trusted)} key(s): {', '.join(trusted.key_ids)}"
    return (trusted, revoked) if c.add("trusted keys", not bad, detail, "remove revoked keys from the trust") else None


_Host = tuple[StateStore | None, str | None, tuple[str | None, int] | None]


def _host_checks(c: _Checklist, settings: Settings) -> _Host | None:
    """The rollback state, the deployment this host runs, and the operator's approval."""
    store = None
    fix = "make the state directory private (chmod 700), or pass --state-dir none"
    if c.run("rollback state", fix, lambda: _store_detail(settings)):
        store = open_store(settings)
    try:
        deployment = host_deployment(settings, store)
    except IntegrityError as exc:
        c.add("deployment", False, str(exc), "pass --deployment NAME (or DURI_INTEGRITY_DEPLOYMENT)")
        return None
    try:
        approval = parse_approval(settings.allow_rollback_to)
    except IntegrityError as exc:
        c.add("rollback approval", False, str(exc), "--allow-rollback-to SERIAL or LABEL@SERIAL")
        return None
    return store, deployment, approval


def _manifest_checks(
    c: _Checklist, settings: Settings, root_real: str, trusted: TrustedKeys, revoked: set[str]
) -> Manifest | None:
    """The signature over the exact bytes, then decoding and the trusted comment."""
    from .config import manifest_paths

    manifest_path, sig_path = manifest_paths(settings, root_real)
    try:
        data, sig = read_signed(manifest_path, sig_path)
        info = check_signature(data, sig, trusted, revoked)
        m, _ = decode(data)
        check_comment(info, m)
    except UntrustedError as exc:
        c.add("manifest", False, str(exc), "ship MANIFEST.json and its .minisig from the release build")
        return None
    c.add(
        "manifest",
        True,
        f"{manifest_path}: deployment {m.deployment}, release {m.release or '-'}, "
        f"serial {m.serial}, {len(m.entries):,} entries, signed by {info.key_id}",
    )
    return m


def _deployment_detail(m: Manifest, deployment: str | None) -> str:
    check_deployment(m, deployment)
    return m.deployment if deployment else f"{m.deployment} (this host names none: not checked)"


def _store_detail(settings: Settings) -> str:
    store = open_store(settings)
    return "rollback protection is off (state directory 'none')" if store is None else f"{store.directory} private"


def _rollback_detail(approved: bool) -> str:
    return "approved rollback" if approved else "not older than the newest release verified here"


def _manifest_clock(created: datetime, expires: datetime | None, now: datetime, check: Callable[[], None]) -> str:
    check()
    if expires is not None and expires - now < EXPIRY_WARNING:
        return f"manifest expires soon: {expires:%Y-%m-%d %H:%M:%S}Z"
    return f"now {now:%Y-%m-%d %H:%M:%S%z}, manifest created {created:%Y-%m-%d %H:%M:%S}Z"


def _secret_key(path: str, password: str | None, settings: Settings, root_real: str | None) -> str:
    from .keys import format_key_id, load_secret_key
    from .trust import trusted_key_sources

    if root_real is not None and inside_root(root_real, path) is not None:
        raise IntegrityError(f"secret key {path!r} is inside the tree")
    sk = load_secret_key(path, password)
    try:
        kid = format_key_id(sk.key_id)
    finally:
        sk.wipe()
    from .keys import load_trusted_keys

    if kid not in load_trusted_keys(trusted_key_sources(settings)).key_ids:
        raise IntegrityError(f"key {kid} is not among the trusted keys: sign with the key the hosts trust")
    return f"{path}: private, key {kid}"


def _no_keys_around(root_real: str, exclude: list[str], secret_key: str | None) -> str:
    """No minisign secret key at the top of the tree or beside it (the release's parent directory),
    nor in what the trusted manifest excludes (not hashed, so verification cannot see it there)."""
    from .files import read_file
    from .keys import looks_like_secret_key

    found: list[str] = []
    for directory in (root_real, os.path.dirname(root_real)):
        try:
            with os.scandir(directory) as it:
                entries = [e for _, e in zip(range(10_000), it, strict=False)]
        except OSError:
            continue
        for e in entries:
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_size <= 4096:
                try:
                    if looks_like_secret_key(read_file(e.path, 4096, "file")):
                        found.append(e.path)
                except IntegrityError:
                    continue
    complete = True
    if exclude:
        scan = _excluded_keys(root_real, exclude, secret_key)
        found += [os.path.join(root_real, rel) for rel in scan.found]
        complete = scan.complete
    if found:
        raise IntegrityError(f"minisign secret key(s) on this host in or next to the release: {', '.join(found[:5])}")
    where = f"none in {root_real} (its excluded part included) or {os.path.dirname(root_real)}"
    if not complete:
        where += f"; the excluded part was checked only in part (over {ENTRY_LIMIT:,} entries, or unlistable)"
    return where


def _excluded_keys(root_real: str, exclude: list[str], secret_key: str | None) -> KeyScan:
    """Secret keys (or the signing key, by inode) among what the manifest's patterns leave out of the tree."""
    excluder = RecordingExcluder(exclude)
    for _ in Walk(root_real, excluder):
        pass  # the walk is for the excluder to record what it leaves out; errors are the verification's
    scan = excluded_secret_keys(root_real, excluder.seen, [secret_key] if secret_key else [])
    return scan._replace(complete=scan.complete and not excluder.missed)


def _clock_synchronised() -> str:
    """Ask the system, where it can say: systemd-timesyncd/chrony via timedatectl, else chronyc."""
    tool = shutil.which("timedatectl")
    if tool:
        out = _ask([tool, "show", "-p", "NTPSynchronized", "--value"])
        if out in ("yes", "no"):
            if out == "no":
                raise IntegrityError("timedatectl says the system clock is not synchronised")
            return "timedatectl: synchronised"
    tool = shutil.which("chronyc")
    if tool:
        out = _ask([tool, "-n", "tracking"])
        if out is not None:
            if "Leap status     : Normal" not in out:
                raise IntegrityError("chronyc tracking: the clock is not synchronised")
            return "chronyc: synchronised"
    return "not known here (no timedatectl or chronyc answered); only the manifest's times were checked"


def _ask(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=_CLOCK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _dir_check(path: str) -> Callable[[], str]:
    return lambda: _dir(path)


def _dir(path: str) -> str:
    from .files import check_owner_and_mode

    try:
        st = os.stat(path)
    except OSError as exc:
        raise IntegrityError(f"{path!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{path!r} is not a directory")
    check_owner_and_mode(st, path, "directory")
    return f"exists, mode {stat.S_IMODE(st.st_mode):04o}"


def _token() -> str:
    from .server import load_token

    load_token()
    return "a bearer token is configured"


def _full_verification(settings: Settings, config_file: str | None) -> str:
    import time

    from .verify import Run, verify_settings

    run = Run(settings.root or ".", time.perf_counter(), "")
    run.config_file = config_file
    report = verify_settings(settings, run, record=False)
    if not report.integrity_verified:
        shown = "; ".join(f"{p.kind} {p.path}" for p in report.problems[:5])
        raise IntegrityError(f"{report.status}: {report.summary}" + (f" ({shown})" if shown else ""))
    return report.summary
