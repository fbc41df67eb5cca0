"""The pre-deploy checklist: every precondition of a successful verification, checked one by one.

Each check says OK or what to fix, so a deploy can be stopped before it starts
instead of rolled back after.
"""

import os
import stat
from datetime import UTC, datetime, timedelta

import msgspec

from .config import MANIFEST_NAME, Settings
from .errors import IntegrityError
from .files import read_limited
from .trust import DEFAULT_CLOCK_SKEW, SYSTEM_REVOKED_DIR, key_sources, rollback_key, state_store
from .walk import check_root, inside_root, iter_tree, open_dir_beneath, open_root

__all__ = ["Check", "DoctorReport", "run_doctor"]

EXPIRY_WARNING = timedelta(days=7)


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str
    fix: str | None = None


class DoctorReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[Check]


def _probe_tree(root_real: str, skip: set[str]) -> tuple[int, list[str]]:
    """Walk the whole tree and open every regular file (without reading): (entries, problems)."""
    from .exclude import Excluder
    from .hashing import OPEN_FLAGS

    errors: list[tuple[str, str]] = []
    problems: list[str] = []
    count = 0
    root_fd = open_root(root_real)
    try:
        for rel, st, _ in iter_tree(root_real, Excluder(), skip, stat_files=True, errors=errors):
            count += 1
            if isinstance(st, os.stat_result) and stat.S_ISREG(st.st_mode):
                rel_dir, _, name = rel.rpartition("/")
                try:
                    dir_fd = open_dir_beneath(root_fd, rel_dir)
                    try:
                        os.close(os.open(name, OPEN_FLAGS, dir_fd=dir_fd))
                    finally:
                        os.close(dir_fd)
                except OSError as exc:
                    problems.append(f"{rel}: {exc.strerror}")
    finally:
        os.close(root_fd)
    problems[:0] = [f"{p}: {m}" for p, m in errors]
    return count, problems


def run_doctor(settings: Settings, *, secret_key: str | None = None, password: str | None = None) -> DoctorReport:
    """Run every check; never raises for an operational problem."""
    from .keys import (
        format_key_id,
        load_revoked_key_ids,
        load_secret_key,
        load_trusted_keys,
        parse_public_key,
        verify_signature,
    )
    from .manifest import MAX_MANIFEST_BYTES, decode_manifest

    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str, fix: str | None = None) -> None:
        checks.append(Check(name=name, ok=ok, detail=detail, fix=None if ok else fix))

    root_real = None
    try:
        root_real = check_root(settings.root or ".")
        add("root", True, root_real)
    except IntegrityError as exc:
        add("root", False, str(exc), "point --root / DURI_INTEGRITY_ROOT at the release directory")

    trusted = None
    try:
        sources = key_sources(settings)
        inside = [s for s in sources if root_real and os.path.exists(s) and inside_root(root_real, s) is not None]
        trusted = load_trusted_keys(sources)
        revoked = load_revoked_key_ids(
            settings.revoked_keys or ([SYSTEM_REVOKED_DIR] if os.path.isdir(SYSTEM_REVOKED_DIR) else [])
        )
        bad = sorted(set(trusted.key_ids) & revoked)
        if inside:
            add("trusted keys", False, f"{', '.join(inside)} inside the tree", "keep trusted keys outside the tree")
        elif not len(trusted):
            add("trusted keys", False, f"no .pub files in {', '.join(sources)}", "install the release public key")
        elif bad:
            add("trusted keys", False, f"revoked yet trusted: {', '.join(bad)}", "remove revoked keys from the trust")
        else:
            add("trusted keys", True, f"{len(trusted)} key(s): {', '.join(trusted.key_ids)}")
    except IntegrityError as exc:
        add("trusted keys", False, str(exc), "fix or replace the key file")
        revoked = set()

    if secret_key:
        try:
            sk = load_secret_key(secret_key, password)
            try:
                kid = format_key_id(parse_public_key(sk.get_public_key().to_base64()).key_id)
            finally:
                sk.wipe()
            if trusted is not None and kid not in trusted.key_ids:
                add(
                    "secret key",
                    False,
                    f"key {kid} is not among the trusted keys",
                    "sign with the key whose public half the hosts trust, or add its .pub to them",
                )
            else:
                add("secret key", True, f"{secret_key}: private, key {kid}")
        except IntegrityError as exc:
            add("secret key", False, str(exc), "chmod 600 the key, or give the right file or password")

    manifest = None
    if root_real is not None:
        manifest_path = settings.manifest or os.path.join(root_real, MANIFEST_NAME)
        sig_path = settings.signature or manifest_path + ".minisig"
        try:
            data = read_limited(manifest_path, MAX_MANIFEST_BYTES)
            sig = read_limited(sig_path, 16384)
            if trusted is None:
                raise IntegrityError("no trusted keys to check it with")
            info = verify_signature(data, sig, trusted)
            if info.key_id in revoked:
                raise IntegrityError(f"signed by revoked key {info.key_id}")
            manifest = decode_manifest(data)
            add(
                "manifest",
                True,
                f"{manifest_path}: release {manifest.release or '-'}, serial {manifest.serial}, "
                f"{len(manifest.entries):,} entries, signed by {info.key_id}",
            )
        except (OSError, IntegrityError) as exc:
            detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            add("manifest", False, detail, "ship MANIFEST.json and its .minisig from the release build")

    if manifest is not None:
        now = datetime.now(tz=UTC)
        skew = timedelta(seconds=DEFAULT_CLOCK_SKEW if settings.clock_skew is None else settings.clock_skew)
        if manifest.created > now + skew:
            add(
                "clock",
                False,
                f"manifest created {manifest.created:%Y-%m-%d %H:%M:%S}Z is in the future",
                "check NTP on this host and on the build host",
            )
        elif manifest.expires is not None and now - skew >= manifest.expires:
            add("clock", False, f"manifest expired {manifest.expires:%Y-%m-%d %H:%M:%S}Z", "build and sign anew")
        elif manifest.expires is not None and manifest.expires - now < EXPIRY_WARNING:
            add("clock", True, f"manifest expires soon: {manifest.expires:%Y-%m-%d %H:%M:%S}Z")
        else:
            add("clock", True, f"now {now:%Y-%m-%d %H:%M:%S}Z, manifest created {manifest.created:%Y-%m-%d %H:%M:%S}Z")

    try:
        store = state_store(settings)
        if store is None:
            add("rollback state", True, "rollback protection is off (state directory 'none')")
        else:
            os.makedirs(store.directory, mode=0o700, exist_ok=True)
            probe = os.path.join(store.directory, f".doctor-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
            detail = f"{store.directory} writable"
            if manifest is not None and root_real is not None:
                prev = None
                for key_id in trusted.key_ids if trusted is not None else []:
                    mark = store.read(rollback_key(settings), key_id)
                    if mark is not None and (prev is None or mark.serial > prev.serial):
                        prev = mark
                if prev is not None and manifest.serial < prev.serial:
                    add(
                        "rollback state",
                        False,
                        f"serial {manifest.serial} is older than {prev.serial} verified here",
                        "deploy a newer release, or approve with --allow-rollback-to "
                        f"{manifest.release or manifest.serial}",
                    )
                    prev = None
                    detail = ""
            if detail:
                add("rollback state", True, detail)
    except (OSError, IntegrityError) as exc:
        add("rollback state", False, str(exc), "make the state directory writable, or set it to 'none'")

    if root_real is not None:
        skip = {r for p in (settings.manifest, settings.signature) if p and (r := inside_root(root_real, p))}
        skip |= {MANIFEST_NAME, MANIFEST_NAME + ".minisig"}
        try:
            count, problems = _probe_tree(root_real, skip)
            if problems:
                shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                add("tree readable", False, shown, "fix permissions so the verifier can read every file")
            else:
                add("tree readable", True, f"{count:,} entries listed and opened")
        except IntegrityError as exc:
            add("tree readable", False, str(exc), "fix the root")
    return DoctorReport(ok=all(c.ok for c in checks), checks=checks)
