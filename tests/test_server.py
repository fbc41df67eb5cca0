"""The status endpoint, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.errors import ConfigError
from duri_integrity.server import CachedVerification, load_token, make_server, make_wsgi_app

from .conftest import Signed

TOKEN = "s3cret-token-0123456789"


class Served:
    def __init__(self, signed: Signed, ttl: float) -> None:
        self.signed = signed
        self.calls = 0

        def verify():  # type: ignore[no-untyped-def]
            self.calls += 1
            return signed.verify()

        self.status = CachedVerification(verify, ttl)
        self.server = make_server(make_wsgi_app(self.status, TOKEN), "127.0.0.1", 0)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(
        self, path: str, token: str | None = TOKEN, method: str = "GET"
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, (json.loads(body) if body else {}), dict(resp.getheaders())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(signed: Signed) -> Iterator[Served]:
    s = Served(signed, ttl=60)
    yield s
    s.close()


def test_details_and_health(served: Served) -> None:
    """With the right token: the report as JSON, and healthz 200 while verified."""
    code, body, headers = served.get("/integrity_details")
    assert code == 200 and body["status"] == "VERIFIED" and body["integrity_verified"] is True
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    code, body, _ = served.get("/healthz")
    assert code == 200 and body == {"status": "VERIFIED", "integrity_verified": True, "checked_at": body["checked_at"]}


def test_authentication(served: Served) -> None:
    """No token: 401 with a challenge; wrong token: 403; nothing is verified for either."""
    code, _, headers = served.get("/integrity_details", token=None)
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    code, _, _ = served.get("/integrity_details", token="wrong-token-0123456789")
    assert code == 403
    code, _, _ = served.get("/healthz", token=TOKEN[:-1])
    assert code == 403
    assert served.calls == 0


def test_unknown_path_and_method(served: Served) -> None:
    """Other paths are 404; other methods 405."""
    assert served.get("/")[0] == 404
    assert served.get("/integrity_details", method="POST")[0] == 405


def test_failed_tree_makes_healthz_503(signed: Signed) -> None:
    """When the tree does not verify, healthz is 503 and the details say why."""
    (signed.root / "added").write_text("x")
    s = Served(signed, ttl=60)
    try:
        assert s.get("/healthz")[0] == 503
        code, body, _ = s.get("/integrity_details")
        assert code == 200 and body["status"] == "FAILED" and body["recommendation"] == "rollback_integrity"
    finally:
        s.close()


def test_load_shares_one_verification(served: Served) -> None:
    """2,000 requests from 8 threads: no errors, and one verification for the whole TTL."""
    errors: list[str] = []
    counts = [0] * 8

    def client(k: int) -> None:
        for _ in range(250):
            try:
                code, body, _ = served.get("/integrity_details" if k % 2 else "/healthz")
                if code != 200 or body.get("integrity_verified") is not True:
                    errors.append(f"{code} {body}")
                counts[k] += 1
            except Exception as exc:  # any transport error is a failure of the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    assert sum(counts) == 2000
    assert served.calls == 1, f"{served.calls} verifications in {time.monotonic() - t0:.1f} s with a 60 s TTL"


def test_stale_result_is_served_while_one_refresh_runs(signed: Signed) -> None:
    """After the TTL, callers get the cached report at once and exactly one background run starts."""
    gate = threading.Event()
    calls = []

    def slow_verify():  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 1:
            gate.wait(10)
        return signed.verify()

    status = CachedVerification(slow_verify, ttl=0.05)
    first = status.get()
    time.sleep(0.1)
    results = []
    threads = [threading.Thread(target=lambda: results.append(status.get())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 20 and all(r is first for r in results)  # none waited for the refresh
    assert len(calls) == 2
    gate.set()
    for _ in range(100):
        if status.runs == 2:
            break
        time.sleep(0.05)
    assert status.runs == 2 and status.get() is not first


def test_token_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token, or a short one, refuses to serve; the token may come from a file."""
    monkeypatch.delenv("DURI_INTEGRITY_STATUS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="bearer token"):
        load_token()
    with pytest.raises(ConfigError):
        load_token("short")
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert load_token(token_file=str(f)) == TOKEN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command(signed: Signed) -> None:
    """`duri-integrity serve` runs as a real process and answers on 127.0.0.1."""
    import shutil

    port = _free_port()
    exe = shutil.which("duri-integrity")
    assert exe is not None
    env = {**os.environ, "DURI_INTEGRITY_STATUS_TOKEN": TOKEN, "DURI_INTEGRITY_STATE_DIR": "none"}
    proc = subprocess.Popen(
        [exe, "serve", str(signed.root), "--bind", f"127.0.0.1:{port}", "-p", str(signed.keys.public)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                assert resp.status == 200 and json.loads(resp.read())["integrity_verified"] is True
                conn.close()
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not come up")
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_without_token_is_one_line_error(signed: Signed, run_cli) -> None:  # type: ignore[no-untyped-def]
    """Without a token the command refuses to start, in one line, exit 4."""
    r = run_cli("serve", str(signed.root), "-p", str(signed.keys.public), env={"DURI_INTEGRITY_STATUS_TOKEN": ""})
    assert r.returncode == 4 and "bearer token" in r.stderr and "Traceback" not in r.stderr
