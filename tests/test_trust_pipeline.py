"""The trust pipeline step by step: each pure check of trust.evaluate, and how its inputs are loaded."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from duri_integrity import trust
from duri_integrity.build import build_manifest, signature_for
from duri_integrity.config import Settings
from duri_integrity.errors import (
    BadSignature,
    CommentMismatch,
    ConfigError,
    Expired,
    FromTheFuture,
    KeyFileError,
    MalformedManifest,
    ManifestUnreadable,
    RevokedKey,
    RollbackRefused,
    TrustAnchorInTree,
    WrongDeployment,
)
from duri_integrity.keys import load_secret_key, load_trusted_keys, make_trusted_comment, sign_bytes
from duri_integrity.manifest import Manifest, encode_manifest
from duri_integrity.state import RollbackState, StateStore

from .conftest import Keys, new_keys

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Keys]:
    """One small built manifest and the key that signs variants of it."""
    where = tmp_path_factory.mktemp("pipeline")
    (where / "tree").mkdir()
    (where / "tree" / "a.txt").write_text("a\n")
    built = build_manifest(str(where / "tree"), deployment="svc", release="v2", serial=200, created=NOW)
    return built.manifest, new_keys(where / "keys")


def _inputs(m: Manifest, keys: Keys, *, comment: str | None = None, **kw: Any) -> trust.TrustInputs:  # kw: TrustInputs'
    """Sign ``m`` (with its own trusted comment unless one is given) and wrap it as pipeline inputs."""
    data = encode_manifest(m)
    sk = load_secret_key(str(keys.secret))
    sig = signature_for(data, m, sk, "MANIFEST.json") if comment is None else sign_bytes(data, sk, comment)
    kw.setdefault("revoked", set())
    kw.setdefault("deployment", "svc")
    kw.setdefault("previous", None)
    kw.setdefault("approval", None)
    return trust.TrustInputs(data=data, signature=sig, trusted=load_trusted_keys([str(keys.public)]), **kw)


def _mark(serial: int, release: str = "v9", root_digest: str = "0" * 64) -> RollbackState:
    return RollbackState(
        deployment="svc", serial=serial, release=release, root_digest=root_digest, key_id="K", updated=0
    )


def _with(m: Manifest, **changes: object) -> Manifest:
    return msgspec.structs.replace(m, **changes)


# -- evaluate and its steps -------------------------------------------------------------------


def test_evaluate_trusts_a_good_manifest_without_any_approval(base: tuple[Manifest, Keys]) -> None:
    """A fresh, correctly signed manifest is trusted; no rollback is approved and no note is added."""
    m, keys = base
    tm = trust.evaluate(_inputs(m, keys, manifest_path="/x/MANIFEST.json"), NOW)
    assert tm.rollback_approved is False and tm.notes == [] and tm.previous is None
    assert tm.key_id == keys.key_id and tm.manifest == m and tm.keys == ["a.txt"]
    info = tm.info
    assert (info.path, info.deployment, info.release, info.serial) == ("/x/MANIFEST.json", "svc", "v2", 200)
    assert info.created == "2026-11-27T12:00:00Z" and info.expires is None and info.entries == 1
    assert info.key_id == keys.key_id and info.root_digest == m.root_digest


def test_manifest_info_spells_expiry_in_utc(base: tuple[Manifest, Keys]) -> None:
    """The report shows an expiry as an ISO time ending in Z."""
    m, keys = base
    tm = trust.evaluate(_inputs(_with(m, expires=NOW + timedelta(days=1)), keys), NOW)
    assert tm.info.expires == "2026-11-28T12:00:00Z"


def test_revoked_signing_key_is_refused(base: tuple[Manifest, Keys]) -> None:
    """A valid signature by a revoked key is UNTRUSTED; another revoked id does not matter."""
    m, keys = base
    with pytest.raises(RevokedKey):
        trust.evaluate(_inputs(m, keys, revoked={keys.key_id}), NOW)
    assert trust.evaluate(_inputs(m, keys, revoked={"0000000000000000"}), NOW).key_id == keys.key_id


def test_signature_must_cover_the_exact_bytes(base: tuple[Manifest, Keys]) -> None:
    """One byte added after signing breaks the signature before anything is decoded."""
    m, keys = base
    inputs = _inputs(m, keys)
    inputs.data += b" "
    with pytest.raises(BadSignature):
        trust.evaluate(inputs, NOW)


def test_signed_garbage_is_malformed(base: tuple[Manifest, Keys]) -> None:
    """Validly signed bytes that are not a manifest are refused as malformed, not trusted."""
    _, keys = base
    sk = load_secret_key(str(keys.secret))
    inputs = trust.TrustInputs(
        data=b"{}",
        signature=sign_bytes(b"{}", sk, "x"),
        trusted=load_trusted_keys([str(keys.public)]),
        revoked=set(),
        deployment=None,
        previous=None,
        approval=None,
    )
    with pytest.raises(MalformedManifest):
        trust.evaluate(inputs, NOW)


@pytest.mark.parametrize("field", ["deployment", "release", "serial", "root"])
def test_trusted_comment_must_agree_with_the_body(base: tuple[Manifest, Keys], field: str) -> None:
    """A signature whose trusted comment names another deployment, release, serial or root is refused."""
    m, keys = base
    values: dict[str, str | int] = {"deployment": "svc", "release": "v2", "serial": 200, "root": m.root_digest}
    others: dict[str, str | int] = {"deployment": "other", "release": "v3", "serial": 201, "root": "f" * 64}
    values[field] = others[field]
    comment = make_trusted_comment(
        "MANIFEST.json", str(values["deployment"]), str(values["release"]), int(values["serial"]), str(values["root"])
    )
    with pytest.raises(CommentMismatch, match=field):
        trust.evaluate(_inputs(m, keys, comment=comment), NOW)


def test_trusted_comment_without_fields_is_accepted(base: tuple[Manifest, Keys]) -> None:
    """A bare trusted comment (as plain minisign writes) has nothing to disagree with."""
    m, keys = base
    assert trust.evaluate(_inputs(m, keys, comment="timestamp:1\tfile:MANIFEST.json"), NOW).manifest == m


def test_created_in_the_future_beyond_the_skew_is_refused(base: tuple[Manifest, Keys]) -> None:
    """Creation exactly at now + skew is accepted; one second later is refused."""
    m, keys = base
    at_edge = _inputs(_with(m, created=NOW + timedelta(seconds=60)), keys, skew=60)
    assert trust.evaluate(at_edge, NOW).manifest.created == NOW + timedelta(seconds=60)
    with pytest.raises(FromTheFuture, match="61 s in the future"):
        trust.evaluate(_inputs(_with(m, created=NOW + timedelta(seconds=61)), keys, skew=60), NOW)


def test_expiry_is_stretched_by_the_skew_not_shrunk(base: tuple[Manifest, Keys]) -> None:
    """Expired exactly when now - skew reaches the expiry; one second before that it still verifies."""
    m, keys = base
    expires = NOW - timedelta(seconds=60)
    with pytest.raises(Expired):
        trust.evaluate(_inputs(_with(m, created=NOW - timedelta(days=1), expires=expires), keys, skew=60), NOW)
    later = _with(m, created=NOW - timedelta(days=1), expires=expires + timedelta(seconds=1))
    assert trust.evaluate(_inputs(later, keys, skew=60), NOW).manifest.expires == expires + timedelta(seconds=1)


def test_expiry_in_the_future_is_not_expired_with_a_large_skew(base: tuple[Manifest, Keys]) -> None:
    """A manifest valid for another hour verifies under a 10-minute skew (the skew is subtracted)."""
    m, keys = base
    fresh = _with(m, expires=NOW + timedelta(hours=1))
    assert trust.evaluate(_inputs(fresh, keys, skew=600), NOW).manifest.expires == NOW + timedelta(hours=1)
    with pytest.raises(Expired):
        trust.evaluate(_inputs(fresh, keys, skew=0), NOW + timedelta(hours=1))


def test_default_clock_skew_is_five_minutes(base: tuple[Manifest, Keys]) -> None:
    """Without a configured skew, 300 s in the future is accepted and 301 s refused."""
    m, keys = base
    assert trust.DEFAULT_CLOCK_SKEW == 300
    assert trust.evaluate(_inputs(_with(m, created=NOW + timedelta(seconds=300)), keys), NOW).manifest
    with pytest.raises(FromTheFuture):
        trust.evaluate(_inputs(_with(m, created=NOW + timedelta(seconds=301)), keys), NOW)


def test_wrong_deployment_is_refused_and_none_checks_nothing(base: tuple[Manifest, Keys]) -> None:
    """A manifest for another deployment is refused; a host naming no deployment does not compare."""
    m, keys = base
    with pytest.raises(WrongDeployment):
        trust.evaluate(_inputs(m, keys, deployment="other"), NOW)
    assert trust.evaluate(_inputs(m, keys, deployment=None), NOW).manifest.deployment == "svc"


@pytest.mark.parametrize("mark", [199, 200])
def test_same_or_newer_serial_is_no_rollback(base: tuple[Manifest, Keys], mark: int) -> None:
    """Serial equal to or above the mark passes without an approval and approves nothing."""
    m, keys = base
    previous = _mark(mark, root_digest=m.root_digest)  # the same serial must be the same tree
    tm = trust.evaluate(_inputs(m, keys, previous=previous), NOW)
    assert tm.rollback_approved is False and tm.notes == [] and tm.previous == previous


def test_check_rollback_answers_a_boolean(base: tuple[Manifest, Keys]) -> None:
    """The rollback step says False (no rollback) or True (approved rollback), never something else."""
    m, _ = base
    assert trust.check_rollback(m, None, None) is False
    assert trust.check_rollback(m, _mark(200, root_digest=m.root_digest), None) is False
    assert trust.check_rollback(m, _mark(201), (None, 200)) is True


def test_older_serial_without_approval_is_refused(base: tuple[Manifest, Keys]) -> None:
    """Below the mark is a rollback; the refusal names the release and how to approve exactly it."""
    m, keys = base
    with pytest.raises(RollbackRefused, match="--allow-rollback-to v2@200"):
        trust.evaluate(_inputs(m, keys, previous=_mark(201)), NOW)
    unlabelled = _with(m, release="")
    comment = make_trusted_comment("MANIFEST.json", "svc", "", 200, m.root_digest)
    with pytest.raises(RollbackRefused, match=r"--allow-rollback-to 200$"):
        trust.evaluate(_inputs(unlabelled, keys, comment=comment, previous=_mark(201)), NOW)


@pytest.mark.parametrize("approval", [(None, 200), ("v2", 200)])
def test_approved_rollback_is_flagged_noted_and_logged(
    base: tuple[Manifest, Keys], approval: tuple[str | None, int], caplog: pytest.LogCaptureFixture
) -> None:
    """An approval naming this serial (and label, if any) lets the older manifest through, noted and logged."""
    m, keys = base
    with caplog.at_level(logging.WARNING, logger="duri_integrity"):
        tm = trust.evaluate(_inputs(m, keys, previous=_mark(300, "v3"), approval=approval), NOW)
    assert tm.rollback_approved is True
    message = (
        "rollback to release 'v2' (serial 200) approved by the operator; "
        "this host had verified release 'v3' (serial 300)"
    )
    assert tm.notes == [message]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, message)]


@pytest.mark.parametrize("approval", [(None, 199), ("v1", 200), ("v2", 201)])
def test_approval_for_another_release_does_not_count(
    base: tuple[Manifest, Keys], approval: tuple[str | None, int]
) -> None:
    """An approval naming another serial or label leaves the rollback refused."""
    m, keys = base
    with pytest.raises(RollbackRefused):
        trust.evaluate(_inputs(m, keys, previous=_mark(300), approval=approval), NOW)


# -- approvals, sources, keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (None, None),
        ("100", (None, 100)),
        ("v1@100", ("v1", 100)),
        ("a@b@7", ("a@b", 7)),
        ("9" * 19, (None, 10**19 - 1)),
    ],
)
def test_parse_approval_accepts_one_release(text: str | None, parsed: object) -> None:
    """An approval is a serial or LABEL@SERIAL (the last @ splits); nothing else."""
    assert trust.parse_approval(text) == parsed


@pytest.mark.parametrize("text", ["v1", "@100", "v1@", "v1@1x", "9" * 20, "", "-1", "v1@\u00b2", "\u0661\u0662"])
def test_parse_approval_refuses_anything_else(text: str) -> None:
    """A label alone, an empty label, a non-number (non-ASCII digits too) or an over-long serial is a usage error."""
    with pytest.raises(ConfigError, match="name exactly one release"):
        trust.parse_approval(text)


def test_trusted_key_directory_that_is_the_tree_is_refused(tree: Path, keys: Keys) -> None:
    """A trusted-key directory that is the tree itself (or a key file in it) cannot vouch for the tree."""
    (tree / "k.pub").write_bytes(keys.public.read_bytes())
    root = os.path.realpath(tree)
    with pytest.raises(TrustAnchorInTree, match=r"^trusted key .* inside the tree being verified"):
        trust.load_keys(Settings(public_key=[str(tree)]), root)
    with pytest.raises(TrustAnchorInTree):
        trust.load_keys(Settings(public_key=[str(tree / "k.pub")]), root)


def test_tree_as_key_directory_is_refused_even_if_its_keys_link_outside(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """The tree named as the trusted-key directory is refused as such, though its .pub links lead outside."""
    planted = tmp_path / "planted.pub"  # somewhere outside the tree that its writer could also reach
    planted.write_bytes(keys.public.read_bytes())
    (tree / "k.pub").symlink_to(planted)
    with pytest.raises(TrustAnchorInTree, match=f"resolves to {os.path.realpath(tree)!r}, inside"):
        trust.load_keys(Settings(public_key=[str(tree)]), os.path.realpath(tree))
    with pytest.raises(TrustAnchorInTree):
        trust.load_keys(Settings(public_key=[str(tree) + "/"]), os.path.realpath(tree))


def test_key_reached_through_a_link_into_the_tree_is_refused(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """A key path outside the tree that resolves inside it is refused (links are followed first)."""
    (tree / "k.pub").write_bytes(keys.public.read_bytes())
    (tmp_path / "via").symlink_to(tree / "k.pub")
    with pytest.raises(TrustAnchorInTree):
        trust.load_keys(Settings(public_key=[str(tmp_path / "via")]), os.path.realpath(tree))


def test_keys_outside_the_tree_and_inline_keys_are_loaded(tree: Path, keys: Keys) -> None:
    """A key file outside the tree and an inline key are both accepted; nothing is revoked by default."""
    inline = keys.public.read_text().splitlines()[1]
    trusted, revoked = trust.load_keys(Settings(public_key=[str(keys.public), inline]), os.path.realpath(tree))
    assert trusted.key_ids == [keys.key_id] and revoked == set()


def test_inline_key_does_not_end_the_inside_the_tree_check(tree: Path, keys: Keys) -> None:
    """An inline key listed first is skipped, and the key file after it is still checked."""
    (tree / "k.pub").write_bytes(keys.public.read_bytes())
    inline = keys.public.read_text().splitlines()[1]
    with pytest.raises(TrustAnchorInTree):
        trust.load_keys(Settings(public_key=[inline, str(tree / "k.pub")]), os.path.realpath(tree))


def test_inline_key_is_not_a_path_even_from_inside_the_tree(
    tree: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from inside the tree (as deploy scripts are), an inline key is still a key, not a path there."""
    monkeypatch.chdir(tree)
    inline = keys.public.read_text().splitlines()[1]
    trusted, _ = trust.load_keys(Settings(public_key=[inline]), os.path.realpath(tree))
    assert trusted.key_ids == [keys.key_id]


def test_only_pub_files_in_a_key_directory_are_keys(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """Other files in a trusted-key directory (even links into the tree) are neither keys nor anchors."""
    keydir = tmp_path / "keydir"
    keydir.mkdir()
    (keydir / "k.pub").write_bytes(keys.public.read_bytes())
    (keydir / "README").symlink_to(tree / "app" / "main.py")
    trusted, _ = trust.load_keys(Settings(public_key=[str(keydir)]), os.path.realpath(tree))
    assert trusted.key_ids == [keys.key_id]


@pytest.mark.parametrize("kind", ["public_key", "revoked_keys"])
def test_shared_key_directory_is_named_in_the_error(tree: Path, keys: Keys, tmp_path: Path, kind: str) -> None:
    """A trusted-key or revoked-key directory others can write is refused, saying which kind it is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    sources: dict[str, Any] = {"public_key": [str(keys.public)], kind: [str(shared)]}  # kind is a parameter
    settings = Settings(**sources)
    what = "trusted-key" if kind == "public_key" else "revoked-key"
    with pytest.raises(KeyFileError, match=f"{what} directory"):
        trust.load_keys(settings, os.path.realpath(tree))


def test_revocation_list_inside_the_tree_is_refused(tree: Path, keys: Keys) -> None:
    """A revoked-key list in the tree could un-revoke a key: it is refused like a trusted key."""
    (tree / "revoked").write_text("")
    settings = Settings(public_key=[str(keys.public)], revoked_keys=[str(tree / "revoked")])
    with pytest.raises(TrustAnchorInTree, match="revoked-key list"):
        trust.load_keys(settings, os.path.realpath(tree))


def test_no_configured_key_uses_the_system_directory(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """With no key configured the system trusted-keys.d is used; without it, a KeyFileError."""
    with pytest.raises(KeyFileError, match="no trusted public key configured"):
        trust.load_keys(Settings(), os.path.realpath(tree))
    system = tmp_path / "etc" / "trusted-keys.d"
    system.mkdir(parents=True)
    with pytest.raises(KeyFileError, match="no public keys found"):
        trust.load_keys(Settings(), os.path.realpath(tree))
    (system / "k.pub").write_bytes(keys.public.read_bytes())
    revoked = tmp_path / "etc" / "revoked-keys.d"
    revoked.mkdir()
    (revoked / "ids").write_text(keys.key_id + "\n")
    trusted, ids = trust.load_keys(Settings(), os.path.realpath(tree))
    assert trusted.key_ids == [keys.key_id] and ids == {keys.key_id}
    # Revocations add up: a configured list never drops the system directory.
    assert trust.revoked_sources(Settings(revoked_keys=["/x"])) == ["/x", str(revoked)]


def test_store_is_off_only_when_switched_off(tmp_path: Path) -> None:
    """state_dir "none" means no store; a directory is created private and used."""
    assert trust.open_store(Settings(state_dir="none")) is None
    store = trust.open_store(Settings(state_dir=str(tmp_path / "st")))
    assert store is not None and store.directory == str(tmp_path / "st")
    assert (tmp_path / "st").stat().st_mode & 0o777 == 0o700


def test_rollback_protection_needs_the_host_deployment(tmp_path: Path) -> None:
    """With a store and no deployment the run is a usage error; without a store it is allowed."""
    store = StateStore(str(tmp_path / "st"))
    with pytest.raises(ConfigError, match="does not say which deployment"):
        trust.host_deployment(Settings(), store)
    assert trust.host_deployment(Settings(), None) is None
    assert trust.host_deployment(Settings(deployment="svc"), store) == "svc"


def test_missing_signature_is_unreadable_manifest(tmp_path: Path) -> None:
    """A missing manifest or signature is UNTRUSTED (manifest_unreadable), naming which file is missing."""
    (tmp_path / "M").write_text("{}")
    with pytest.raises(ManifestUnreadable, match=r"^cannot read signature "):
        trust.read_signed(str(tmp_path / "M"), str(tmp_path / "M.minisig"))
    with pytest.raises(ManifestUnreadable, match=r"^cannot read manifest "):
        trust.read_signed(str(tmp_path / "none"), str(tmp_path / "M"))


def test_load_inputs_reads_everything_the_decision_needs(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """Keys, the host's mark, approval, skew (0 is a real setting) and the conventional paths."""
    from .conftest import build_and_sign

    build_and_sign(tree, keys, release="v1", serial=5)
    state = tmp_path / "st"
    StateStore(str(state)).record("svc", serial=9, release="v9", root_digest="0" * 64, key_id="K")
    settings = Settings(
        public_key=[str(keys.public)], state_dir=str(state), deployment="svc", allow_rollback_to="v1@5", clock_skew=0
    )
    root = os.path.realpath(tree)
    inputs = trust.load_inputs(settings, root)
    assert inputs.skew == 0 and inputs.approval == ("v1", 5) and inputs.deployment == "svc"
    assert inputs.previous is not None and inputs.previous.serial == 9
    assert inputs.manifest_path == os.path.join(root, "MANIFEST.json")
    assert inputs.signature_path == os.path.join(root, "MANIFEST.json.minisig")
    assert inputs.store is not None and inputs.data == (tree / "MANIFEST.json").read_bytes()
    default = trust.load_inputs(Settings(public_key=[str(keys.public)], state_dir="none"), root)
    assert default.skew == 300 and default.previous is None and default.store is None
    tm = trust.evaluate(inputs, datetime.now(tz=UTC))
    assert tm.rollback_approved is True


def test_load_inputs_lists_each_key_directory_once_and_anchors_what_it_read(
    tree: Path, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each key directory is listed once; its key and revocation files (not inline keys) become the anchors."""
    from .conftest import build_and_sign

    build_and_sign(tree, keys, release="v1", serial=5)
    keydir, revdir = tmp_path / "trusted", tmp_path / "revoked"
    keydir.mkdir()
    revdir.mkdir()
    (keydir / "k.pub").write_bytes(keys.public.read_bytes())
    (revdir / "ids").write_text("# none revoked yet\n")
    inline = keys.public.read_text().splitlines()[1]
    listed: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: str) -> list[str]:
        listed.append(os.fspath(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    settings = Settings(public_key=[str(keydir), inline], revoked_keys=[str(revdir)], state_dir="none")
    inputs = trust.load_inputs(settings, os.path.realpath(tree))
    assert sorted(listed) == sorted([str(keydir), str(revdir)])
    paths = sorted(p for _, p in inputs.anchors.values())
    assert paths == sorted([str(keydir / "k.pub"), str(revdir / "ids")])
    assert {(keydir / "k.pub").stat().st_ino, (revdir / "ids").stat().st_ino} == set(inputs.anchors)


def test_record_verified_raises_the_mark_and_records_approvals(base: tuple[Manifest, Keys], tmp_path: Path) -> None:
    """A verified run raises the mark; an approved rollback is pinned and recorded (the mark stays); no store, no-op."""
    m, keys = base
    store = StateStore(str(tmp_path / "st"))
    trust.record_verified(trust.evaluate(_inputs(m, keys), NOW), None)
    assert not (tmp_path / "st").exists()
    trust.record_verified(trust.evaluate(_inputs(m, keys), NOW), store)
    mark = store.read("svc")
    assert mark is not None and (mark.serial, mark.release, mark.key_id) == (200, "v2", keys.key_id)
    assert mark.root_digest == m.root_digest and mark.approvals == []
    older = _with(m, serial=150)
    comment = make_trusted_comment("MANIFEST.json", "svc", "v2", 150, m.root_digest)
    tm = trust.evaluate(_inputs(older, keys, comment=comment, previous=mark, approval=(None, 150)), NOW)
    trust.record_verified(tm, store)
    pinned = store.read("svc")
    assert (
        pinned is not None
        and pinned.serial == 200
        and (pinned.approved_serial, pinned.approved_digest)
        == (
            150,
            m.root_digest,
        )
    )
    assert [(a.serial, a.previous_serial) for a in pinned.approvals] == [(150, 200)]


def test_anchors_sharing_an_inode_number_on_two_devices_both_stay_refused(tmp_path: Path) -> None:
    """One anchor never replaces another with the same inode number: the inode is refused on any device."""
    a = tmp_path / "a.pub"
    a.write_text("x")
    st = a.stat()
    anchors = {st.st_ino: (st.st_dev + 1, "/elsewhere/b.pub")}  # the same number on another device
    trust.anchor_inodes([str(a)], into=anchors)
    assert anchors[st.st_ino] == (trust.ANY_DEVICE, str(a))
    assert trust.anchor_inodes([str(a)]) == {st.st_ino: (st.st_dev, str(a))}
