"""The status endpoint over real HTTP (waitress on loopback): routes, token, verdicts, watchdog."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.errors import ConfigError
from duri_integrity.report import Report
from duri_integrity.server import CachedVerification, StatusService, load_token, make_server, make_wsgi_app

from .conftest import Signed

TOKEN = "s3cret-token-0123456789"
DASHBOARDS = ("/dashboard/integrity_details", "/dashboard/canary_overview", "/dashboard/health_summary")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def request(
    port: int,
    path: str,
    token: str | None = TOKEN,
    method: str = "GET",
    host: str = "127.0.0.1",
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """One HTTP request: status, the body parsed as JSON (None when empty), headers (any case)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        all_headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, headers=all_headers)
        resp = conn.getresponse()
        body = resp.read()
        is_json = resp.getheader("Content-Type") == "application/json"
        return resp.status, (json.loads(body) if body and is_json else body or None), resp.headers
    finally:
        conn.close()


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, host: str = "127.0.0.1") -> None:
    """Wait (at most 30 s) until something accepts connections on the port."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with code {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on {host}:{port}")


class Served:
    """A status server in this process (waitress in a thread), around any verification callable."""

    def __init__(self, verify: Callable[[], Report], ttl: float = 60, deadline: float = 30, checks: Any = None) -> None:
        self.calls = 0

        def counted() -> Report:
            self.calls += 1
            return verify()

        self.status = CachedVerification(counted, ttl, deadline=deadline)
        self.server = make_server(make_wsgi_app(StatusService(self.status, TOKEN, checks)), "127.0.0.1", 0)
        self.port = self.server.addresses[0][1]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def get(self, path: str, token: str | None = TOKEN, method: str = "GET") -> tuple[int, Any, Any]:
        return request(self.port, path, token, method)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def served(signed: Signed) -> Iterator[Served]:
    s = Served(signed.verify)
    yield s
    s.close()


def test_details_and_health(served: Served) -> None:
    """With the right token: the report as JSON, and healthz 200 while verified."""
    code, body, headers = served.get("/integrity_details")
    assert code == 200 and body["status"] == "VERIFIED" and body["integrity_verified"] is True
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    code, body, _ = served.get("/healthz")
    assert code == 200 and body == {"status": "VERIFIED", "integrity_verified": True, "checked_at": body["checked_at"]}


def test_canary_check_and_dashboards_on_a_verified_tree(served: Served) -> None:
    """A verified tree and no service checks: canary_ok, proceed, healthy, and the release named."""
    code, v, _ = served.get("/canary_check")
    assert code == 200
    assert v["canary_ok"] is True and v["recommendation"] == "proceed" and v["rollback_required"] is False
    assert v["status"] == "ok" and v["release"] == "v1.0.0" and v["checked_at"].endswith("Z")
    assert [c["name"] for c in v["checks"]] == ["integrity"] and "no service checks" in v["summary"]
    code, d, _ = served.get("/dashboard/integrity_details")
    assert code == 200 and d["integrity_verified"] is True and d["manifest"]["release"] == "v1.0.0"
    code, o, _ = served.get("/dashboard/canary_overview")
    assert code == 200 and o["rollback_required"] is False and o["recommendation"] == "proceed" and o["reasons"] == []
    code, h, _ = served.get("/dashboard/health_summary")
    assert code == 200 and h["overall_health"] == "healthy" and h["components"]["integrity"]["health"] == "healthy"
    assert served.calls == 1


def test_failed_tree_answers_200_with_a_rollback_verdict(signed: Signed) -> None:
    """A tampered tree: healthz 503, but /canary_check and the dashboards answer 200 with the verdict."""
    (signed.root / "added").write_text("x")
    s = Served(signed.verify)
    try:
        assert s.get("/healthz")[0] == 503
        code, v, _ = s.get("/canary_check")
        assert code == 200 and v["canary_ok"] is False and v["status"] == "failed"
        assert v["recommendation"] == "rollback_integrity" and v["rollback_required"] is True
        code, d, _ = s.get("/dashboard/integrity_details")
        assert code == 200 and d["integrity_verified"] is False and d["status"] == "FAILED"
        code, o, _ = s.get("/dashboard/canary_overview")
        assert code == 200 and o["rollback_required"] is True and o["reasons"][0].startswith("integrity: FAILED")
        code, h, _ = s.get("/dashboard/health_summary")
        assert code == 200 and h["overall_health"] == "unhealthy"
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/canary_check", *DASHBOARDS, "/integrity_details", "/healthz"])
def test_authentication(served: Served, path: str) -> None:
    """No token: 401 with a challenge; wrong, truncated or non-ASCII token: 403; nothing is verified."""
    code, body, headers = served.get(path, token=None)
    assert (
        code == 401 and headers["WWW-Authenticate"].startswith("Bearer") and body == {"error": "bearer token required"}
    )
    assert served.get(path, token="wrong-token-0123456789")[0] == 403
    assert served.get(path, token=TOKEN[:-1])[0] == 403
    assert served.get(path, token=TOKEN + "x")[0] == 403
    assert served.get(path, token="é" * 20)[0] == 403
    assert request(served.port, path, None, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert request(served.port, path, None, headers={"Authorization": "Bearer "})[0] == 401
    assert served.calls == 0


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/canary_check/",
        "/canary_check/..",
        "/x/../canary_check",
        "/./canary_check",
        "/canary_check%00",
        "/CANARY_CHECK",
        "/dashboard",
        "/dashboard/",
        "/healthz.json",
    ],
)
def test_path_tricks_are_404(served: Served, path: str) -> None:
    """Only the exact route paths answer; every variant is 404 and verifies nothing."""
    assert served.get(path)[0] == 404
    assert served.calls == 0


def test_leading_slashes_collapse_but_still_need_the_token(served: Served) -> None:
    """waitress collapses leading slashes (//canary_check is /canary_check): the token is still required."""
    assert served.get("//canary_check", token=None)[0] == 401
    assert served.get("///canary_check", token="wrong-token-0123456789")[0] == 403
    assert served.calls == 0
    assert served.get("//canary_check")[0] == 200


def test_query_strings_are_ignored(served: Served) -> None:
    """A query string neither changes the route nor the answer."""
    code, v, _ = served.get("/canary_check?canary_ok=true&token=x")
    assert code == 200 and v["canary_ok"] is True
    assert served.get("/canary_check?x", token=None)[0] == 401


def test_methods_and_head(served: Served) -> None:
    """POST/PUT/DELETE are 405; HEAD answers GET's status and headers with no body."""
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        code, _, headers = served.get("/canary_check", method=method)
        assert code == 405 and headers["Allow"] == "GET, HEAD"
    for path in ("/canary_check", *DASHBOARDS, "/healthz", "/nope"):
        get_code, _, get_headers = served.get(path)
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        conn.request("HEAD", path, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == get_code and resp.read() == b""
        assert resp.getheader("Content-Type") == "application/json" and int(resp.getheader("Content-Length") or 0) > 0
        conn.close()
        assert get_headers["Content-Type"] == "application/json"
    assert served.get("/canary_check", token=None, method="HEAD")[0] == 401


def test_huge_headers_are_refused(served: Served) -> None:
    """A request with more than 8 KiB of headers is refused (431/400) and the server keeps serving."""
    code, _, _ = request(served.port, "/canary_check", headers={"X-Pad": "a" * 20000})
    assert code in (400, 431)
    assert served.get("/canary_check")[0] == 200


def test_load_shares_one_verification(served: Served) -> None:
    """2,000 requests from 8 threads: no errors, and one verification for the whole TTL."""
    errors: list[str] = []
    counts = [0] * 8

    def client(k: int) -> None:
        for _ in range(250):
            try:
                code, body, _ = served.get("/canary_check" if k % 2 else "/healthz")
                if code != 200 or body.get("integrity_verified") is not True:
                    errors.append(f"{code} {body}")
                counts[k] += 1
            except Exception as exc:  # any transport error is a failure of the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    assert sum(counts) == 2000
    assert served.calls == 1


# --- the watchdog: no stale VERIFIED, no thread per request -------------------------------


class Gate:
    """A verification that blocks while the gate is closed (a stuck NFS mount, say)."""

    def __init__(self, signed: Signed) -> None:
        self.signed = signed
        self.open = threading.Event()
        self.open.set()
        self.started = 0

    def __call__(self) -> Report:
        self.started += 1
        self.open.wait(60)
        return self.signed.verify()


def test_a_result_older_than_the_ttl_is_never_served(signed: Signed) -> None:
    """After the TTL, a stuck refresh gives 'not verified' (healthz 503, canary_ok false), not the old VERIFIED."""
    gate = Gate(signed)
    s = Served(gate, ttl=1, deadline=1)
    try:
        code, first, _ = s.get("/healthz")
        assert code == 200 and first["integrity_verified"] is True
        gate.open.clear()
        time.sleep(1.1)  # the result is now older than its TTL, and the refresh will hang
        code, body, _ = s.get("/healthz")
        assert code == 503 and body["integrity_verified"] is False and body["status"] == "ERROR"
        code, v, _ = s.get("/canary_check")
        assert code == 200 and v["canary_ok"] is False and v["status"] == "unknown"
        assert v["recommendation"] == "rollback_unverifiable" and v["rollback_required"] is True
        assert "has not finished within its 1-second deadline" in v["summary"]
        assert f"VERIFIED, checked at {first['checked_at']}" in v["summary"]
        code, d, _ = s.get("/dashboard/integrity_details")
        assert code == 200 and d["integrity_verified"] is False and "out of date" in d["reason"]
        code, h, _ = s.get("/dashboard/health_summary")
        assert h["overall_health"] == "unknown"
        assert gate.started == 2  # one stuck refresh, however many requests
        gate.open.set()
        deadline = time.monotonic() + 30
        while s.status.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, body, _ = s.get("/healthz")
        assert code == 200 and body["checked_at"] >= first["checked_at"]
    finally:
        gate.open.set()
        s.close()


def test_a_stuck_run_does_not_leak_a_thread_per_request(signed: Signed) -> None:
    """50 requests during a stuck verification: all answered 'not verified', one run, no new threads."""
    gate = Gate(signed)
    gate.open.clear()
    status = CachedVerification(gate, ttl=60, deadline=0.2)
    try:
        before = threading.active_count()
        reports = [status.get() for _ in range(50)]
        assert all(r.status == "ERROR" and not r.integrity_verified for r in reports)
        assert gate.started == 1 and threading.active_count() <= before + 1
    finally:
        gate.open.set()


def test_refresh_ahead_serves_a_valid_result_without_waiting(signed: Signed) -> None:
    """Between TTL/2 and TTL the current result is served at once while one refresh runs."""
    gate = Gate(signed)
    status = CachedVerification(gate, ttl=2, deadline=30)
    first = status.get()
    gate.open.clear()
    time.sleep(1.05)
    try:
        results = [status.get() for _ in range(20)]
        assert all(r is first for r in results) and gate.started == 2
    finally:
        gate.open.set()


def test_a_refresh_that_cannot_start_is_not_verified(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """If no thread can be started (out of threads), the answer is 'not verified' with the reason."""
    status = CachedVerification(signed.verify, ttl=60)

    def no_threads(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    report = status.get()
    assert report.status == "ERROR" and "could not start a check: can't start new thread" in (report.reason or "")


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                found.append(int(pid))
    return found


def test_child_verification_is_killed_at_the_deadline(signed: Signed) -> None:
    """A verification child that overruns its deadline is killed (no process left) and reported."""
    before = set(_children())
    status = CachedVerification.of_tree(
        str(signed.root), ttl=60, deadline=0.01, public_keys=[str(signed.keys.public)], state_dir="none"
    )
    report = status.get()
    assert report.status == "ERROR" and "did not finish within 0.01 seconds and was stopped" in (report.reason or "")
    assert set(_children()) <= before


def test_child_output_past_the_limit_is_not_read_and_not_verified(signed: Signed) -> None:
    """A child writing more than a report can be is stopped at the limit and the answer is ERROR."""
    status = CachedVerification.of_tree(str(signed.root), public_keys=[str(signed.keys.public)], state_dir="none")
    assert status._child is not None
    status._child.max_report_bytes = 64
    report = status.get()
    assert report.status == "ERROR" and report.reason == "the verification's report is too large"


def test_a_verified_report_from_a_failed_child_is_not_verified(signed: Signed, tmp_path: Path) -> None:
    """A VERIFIED report whose child exited non-zero (output not delivered whole) is not served as VERIFIED."""
    status = CachedVerification.of_tree(str(signed.root), public_keys=[str(signed.keys.public)], state_dir="none")
    assert status.get().status == "VERIFIED"
    child = status._child
    assert child is not None
    saved = tmp_path / "report.json"
    saved.write_bytes(subprocess.run(child.argv, env=child.env, capture_output=True, check=True).stdout)
    child.argv = [sys.executable, "-c", f"import sys; sys.stdout.write(open({str(saved)!r}).read()); sys.exit(4)"]
    report = CachedVerification(child, 60, root=child.root).get()
    assert report.status == "ERROR" and "exited with code 4, not the VERIFIED report's" in (report.reason or "")


def test_child_verification_passes_the_options(signed: Signed, tmp_path: Path) -> None:
    """of_tree passes verify's options to the child: a manifest kept elsewhere, a revoked key."""
    elsewhere = tmp_path / "kept"
    elsewhere.mkdir()
    manifest, sig = elsewhere / "m.json", elsewhere / "m.json.minisig"
    signed.manifest.rename(manifest)
    signed.signature.rename(sig)
    options: dict[str, Any] = {"manifest": manifest, "signature": sig, "public_keys": [str(signed.keys.public)]}
    ok = CachedVerification.of_tree(str(signed.root), state_dir="none", **options).get()
    assert ok.status == "VERIFIED" and ok.manifest is not None and ok.manifest.path == str(manifest)
    revoked = CachedVerification.of_tree(
        str(signed.root), state_dir="none", revoked_keys=[str(signed.keys.public)], **options
    ).get()
    assert revoked.status == "UNTRUSTED" and revoked.recommendation == "rollback_untrusted"


def test_verify_options_cannot_inject_flags(signed: Signed, tmp_path: Path) -> None:
    """A root or option value starting with '-' stays a value in the child's command line."""
    from duri_integrity.watchdog import verify_command

    args = verify_command("--json", {"manifest": "--quick", "public_keys": ["-p"], "quick": False})
    assert args == ["verify", "--json", "--manifest=--quick", "--public-key=-p", "--", "--json"]
    report = CachedVerification.of_tree(
        str(signed.root), manifest="--quick", public_keys=[str(signed.keys.public)], state_dir="none"
    ).get()
    assert report.status == "UNTRUSTED" and "'--quick'" in (report.reason or ""), report.reason


# --- the token -----------------------------------------------------------------------------


def test_token_sources_and_their_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Option, then --token-file, then DURI_INTEGRITY_STATUS_TOKEN_FILE, DURI_INTEGRITY_STATUS_TOKEN, CANARY_TOKEN."""
    monkeypatch.delenv("CANARY_TOKEN", raising=False)
    files = {}
    for name in ("option", "env"):
        files[name] = tmp_path / name
        files[name].write_text(f"{name}-file-token-0123456789\nsecond line\n")
    monkeypatch.setenv("CANARY_TOKEN", "canary-token-0123456789")
    assert load_token() == "canary-token-0123456789"
    monkeypatch.setenv("DURI_INTEGRITY_STATUS_TOKEN", "status-token-0123456789")
    assert load_token() == "status-token-0123456789"
    monkeypatch.setenv("DURI_INTEGRITY_STATUS_TOKEN_FILE", str(files["env"]))
    assert load_token() == "env-file-token-0123456789"
    assert load_token(token_file=str(files["option"])) == "option-file-token-0123456789"
    assert load_token("given-token-0123456789", str(files["option"])) == "given-token-0123456789"


def test_token_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token names every source; a short one or a FIFO is refused at once (no hang)."""
    monkeypatch.delenv("CANARY_TOKEN", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_token()
    for source in ("--token-file", "DURI_INTEGRITY_STATUS_TOKEN_FILE", "DURI_INTEGRITY_STATUS_TOKEN", "CANARY_TOKEN"):
        assert source in str(exc.value)
    monkeypatch.setenv("CANARY_TOKEN", "short")
    with pytest.raises(ConfigError, match="from CANARY_TOKEN is shorter than 16"):
        load_token()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_token(token_file=str(fifo))
    assert time.monotonic() - t0 < 10


def test_a_token_file_others_can_write_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A token file group or others may write is refused (they could choose the token); 0644 is accepted."""
    monkeypatch.delenv("CANARY_TOKEN", raising=False)
    token_file = tmp_path / "status.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    assert load_token(token_file=str(token_file)) == TOKEN
    token_file.chmod(0o664)
    with pytest.raises(ConfigError, match=r"writable by group or others .*\(from --token-file\)"):
        load_token(token_file=str(token_file))


# --- the serve command ---------------------------------------------------------------------


def serve(signed: Signed, bind: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`duri-integrity serve` as a real process (the module; PYTHONPATH points at this checkout)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_") and k != "CANARY_TOKEN"}
    full_env.update({"DURI_INTEGRITY_STATE_DIR": "none", **({"CANARY_TOKEN": TOKEN} if env is None else env)})
    args = [sys.executable, "-m", "duri_integrity", "serve", str(signed.root), "--bind", bind]
    args += ["-p", str(signed.keys.public), *extra]
    return subprocess.Popen(args, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_serve_command_with_canary_token(signed: Signed) -> None:
    """`serve` with CANARY_TOKEN answers /canary_check; SIGTERM stops it cleanly."""
    port = free_port()
    proc = serve(signed, f"127.0.0.1:{port}")
    try:
        wait_for_port(port, proc)
        code, v, _ = request(port, "/canary_check")
        assert code == 200 and v["canary_ok"] is True and v["release"] == "v1.0.0"
    finally:
        err = stop(proc)
    assert proc.returncode == 0 and "Traceback" not in err


def test_serve_token_file_beats_the_environment(signed: Signed, tmp_path: Path) -> None:
    """--token-file wins over CANARY_TOKEN and DURI_INTEGRITY_STATUS_TOKEN."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    port = free_port()
    env = {"CANARY_TOKEN": TOKEN, "DURI_INTEGRITY_STATUS_TOKEN": TOKEN}
    proc = serve(signed, f"127.0.0.1:{port}", "--token-file", str(token_file), env=env)
    try:
        wait_for_port(port, proc)
        assert request(port, "/canary_check")[0] == 403
        assert request(port, "/canary_check", token="file-token-0123456789")[0] == 200
    finally:
        stop(proc)


def test_serve_binds_ipv6(signed: Signed) -> None:
    """--bind [::1]:PORT serves over IPv6 loopback."""
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    proc = serve(signed, f"[::1]:{port}")
    try:
        wait_for_port(port, proc, host="::1")
        code, v, _ = request(port, "/canary_check", host="::1")
        assert code == 200 and v["canary_ok"] is True
    finally:
        stop(proc)


def test_serve_names_an_address_in_use(signed: Signed) -> None:
    """A port already taken: one line naming the address, exit 4, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(signed, f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4
    assert err.strip() == f"duri-integrity: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("bind", ["8787", "::1:8787", "[::1]", "host:0", "host:65536", ":8787"])
def test_serve_refuses_a_bad_bind(signed: Signed, bind: str) -> None:
    """A --bind that is not HOST:PORT is a usage error (exit 2)."""
    proc = serve(signed, bind)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is not HOST:PORT" in err


def test_serve_without_token_is_one_line_error(signed: Signed) -> None:
    """Without a token the command refuses to start, in one line naming every source, exit 4."""
    proc = serve(signed, f"127.0.0.1:{free_port()}", env={})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--token-file FILE" in err and "CANARY_TOKEN" in err and "DURI_INTEGRITY_STATUS_TOKEN_FILE" in err
