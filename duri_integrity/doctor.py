"""The pre-deploy checklist: every precondition of a successful verification, checked one by one.

Each check says OK or what to fix, so a deploy can be stopped before it starts
instead of rolled back after.
"""

import os
from datetime import UTC, datetime, timedelta

import msgspec

from .config import OWN_FILES, Settings, manifest_paths
from .errors import IntegrityError
from .trust import (
    Untrusted,
    clock_problem,
    key_sources,
    read_signed,
    revoked_key_ids,
    rollback_key,
    state_store,
)
from .walk import DirCursor, Walk, WalkError, check_root, inside_root, open_root, relative_inside

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
    cursor = DirCursor(root_fd)
    try:
        for found in Walk(root_real, Excluder(), skip, stat_files=True):
            if isinstance(found, WalkError):
                errors.append((found.path, found.message))
                continue
            count += 1
            rel = found.path
            if found.kind == "file":
                rel_dir, _, name = rel.rpartition("/")
                try:
                    os.close(os.open(name, OPEN_FLAGS, dir_fd=cursor.enter(rel_dir)))
                except OSError as exc:
                    problems.append(f"{rel}: {exc.strerror}")
    finally:
        cursor.close()
        os.close(root_fd)
    problems[:0] = [f"{p}: {m}" for p, m in errors]
    return count, problems


def run_doctor(settings: Settings, *, secret_key: str | None = None, password: str | None = None) -> DoctorReport:
    """Run every check; never raises for an operational problem."""
    from .keys import (
        format_key_id,
        load_secret_key,
        load_trusted_keys,
        parse_public_key,
        verify_signature,
    )
    from .manifest import decode_manifest

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
        revoked = revoked_key_ids(settings)
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
    signed_by = None
    if root_real is not None:
        manifest_path, sig_path = manifest_paths(settings, root_real)
        try:
            data, sig = read_signed(manifest_path, sig_path)
            if trusted is None:
                raise IntegrityError("no trusted keys to check it with")
            signed_by = verify_signature(data, sig, trusted).key_id
            if signed_by in revoked:
                raise IntegrityError(f"signed by revoked key {signed_by}")
            manifest = decode_manifest(data)
            add(
                "manifest",
                True,
                f"{manifest_path}: release {manifest.release or '-'}, serial {manifest.serial}, "
                f"{len(manifest.entries):,} entries, signed by {signed_by}",
            )
        except (Untrusted, IntegrityError) as exc:
            add("manifest", False, str(exc), "ship MANIFEST.json and its .minisig from the release build")

    if manifest is not None:
        now = datetime.now(tz=UTC)
        problem = clock_problem(manifest, settings, now)
        if problem:
            add("clock", False, problem, "check NTP here and on the build host; rebuild and sign if it expired")
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
            mark = store.read(rollback_key(settings), signed_by) if manifest is not None and signed_by else None
            if manifest is not None and mark is not None and manifest.serial < mark.serial:
                add(
                    "rollback state",
                    False,
                    f"serial {manifest.serial} is older than {mark.serial} verified here",
                    "deploy a newer release, or approve with --allow-rollback-to "
                    + str(manifest.release or manifest.serial),
                )
            else:
                add("rollback state", True, f"{store.directory} writable")
    except (OSError, IntegrityError) as exc:
        add("rollback state", False, str(exc), "make the state directory writable, or set it to 'none'")

    if root_real is not None:
        skip = relative_inside(root_real, manifest_paths(settings, root_real)) | set(OWN_FILES)
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
