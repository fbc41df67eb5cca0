"""Service checks against a real Prometheus (Debian's binary) scraping a small exporter on loopback."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.errors import ConfigError
from duri_integrity.promcheck import evaluate, load_checks, make_cached_checks

from .conftest import Signed, require_tool
from .test_server import TOKEN, Served, free_port, request, serve, stop, wait_for_port

# The rollout plan's service checks, as an operator would write them for this service.
PLAN_CHECKS = """
[[checks]]
name = "error_rate_5m"
query = '''
(sum(rate(http_requests_total{{service="{svc}",code=~"5.."}}[5m])) or vector(0))
  / sum(rate(http_requests_total{{service="{svc}"}}[5m]))'''
comparison = "<"
threshold = 0.01
recommendation = "rollback_error_rate"

[[checks]]
name = "latency_p95_5m"
query = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{service="{svc}"}}[5m])))'
comparison = "<"
threshold = 0.5
recommendation = "rollback_latency"

[[checks]]
name = "health_failure_rate_5m"
query = '''
sum(rate(healthcheck_failures_total{{service="{svc}"}}[5m]))
  / sum(rate(healthcheck_runs_total{{service="{svc}"}}[5m]))'''
comparison = "<"
threshold = 0.05
recommendation = "rollback_health"
"""


class Exporter:
    """/metrics for any number of services; every scrape adds 100 requests and 10 health checks each."""

    def __init__(self) -> None:
        self.error_fraction: dict[str, float] = {}
        self.totals: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def scrape(self) -> str:
        lines = []
        with self.lock:
            for svc, frac in self.error_fraction.items():
                t = self.totals.setdefault(svc, {"ok": 0, "err": 0, "fast": 0, "hc": 0, "hcf": 0})
                t["err"] += 100 * frac
                t["ok"] += 100 * (1 - frac)
                t["fast"] += 100
                t["hc"] += 10
                lines += [
                    f'http_requests_total{{service="{svc}",code="200"}} {t["ok"]}',
                    f'http_requests_total{{service="{svc}",code="500"}} {t["err"]}',
                    f'http_request_duration_seconds_bucket{{service="{svc}",le="0.1"}} {t["fast"]}',
                    f'http_request_duration_seconds_bucket{{service="{svc}",le="0.5"}} {t["fast"]}',
                    f'http_request_duration_seconds_bucket{{service="{svc}",le="+Inf"}} {t["fast"]}',
                    f'healthcheck_runs_total{{service="{svc}"}} {t["hc"]}',
                    f'healthcheck_failures_total{{service="{svc}"}} {t["hcf"]}',
                ]
        return "\n".join(lines) + "\n"


class Prometheus:
    def __init__(self, url: str, exporter: Exporter, tmp: Path) -> None:
        self.url = url
        self.exporter = exporter
        self.tmp = tmp

    def checks_file(self, svc: str, error_fraction: float = 0.0, extra: str = "", timeout: float = 2) -> Path:
        """A checks file for one service of the exporter (its own label, so tests do not interfere)."""
        with self.exporter.lock:
            self.exporter.error_fraction[svc] = error_fraction
        path = self.tmp / f"{svc}.toml"
        head = f'[prometheus]\nurl = "{self.url}"\ntimeout_seconds = {timeout}\ncache_seconds = 0.2\n'
        path.write_text(head + PLAN_CHECKS.format(svc=svc) + extra)
        return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus on a random loopback port, scraping the exporter every second."""
    binary = require_tool("prometheus", "prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    exporter = Exporter()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: myservice\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "/-/ready", token=None, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not start: {proc.stderr.read() if proc.stderr else b''!r}")
            time.sleep(0.1)
        yield Prometheus(f"http://127.0.0.1:{port}", exporter, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        exporter.server.shutdown()
        exporter.server.server_close()


def wait_until(what: str, fetch: Callable[[], dict[str, Any]], ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll (at most 60 s) until ``ok(fetch())``: Prometheus needs a few scrapes before rates exist."""
    deadline = time.monotonic() + 60
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {value}")
        time.sleep(0.25)


def by_name(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in verdict["checks"]}


def test_a_breached_check_flips_canary_ok_with_its_own_recommendation(signed: Signed, prometheus: Prometheus) -> None:
    """All three plan checks pass on a healthy service; 50% errors turn canary_ok false with rollback_error_rate."""
    checks = make_cached_checks(load_checks(str(prometheus.checks_file("breach"))))
    s = Served(signed.verify, checks=checks)
    try:
        v = wait_until("healthy service", lambda: s.get("/canary_check")[1], lambda v: v["canary_ok"])
        assert v["recommendation"] == "proceed" and v["status"] == "ok"
        assert [c["status"] for c in v["checks"]] == ["ok", "ok", "ok", "ok"]
        assert by_name(v)["latency_p95_5m"]["value"] < 0.5 and by_name(v)["error_rate_5m"]["value"] == 0
        assert s.get("/dashboard/health_summary")[1]["overall_health"] == "healthy"
        with prometheus.exporter.lock:
            prometheus.exporter.error_fraction["breach"] = 0.5
        v = wait_until("breach", lambda: s.get("/canary_check")[1], lambda v: not v["canary_ok"])
        assert v["status"] == "failed" and v["recommendation"] == "rollback_error_rate" and v["rollback_required"]
        rate = by_name(v)["error_rate_5m"]
        assert rate["status"] == "failed" and rate["value"] >= 0.01 and rate["recommendation"] == "rollback_error_rate"
        assert v["integrity_verified"] is True and by_name(v)["latency_p95_5m"]["status"] == "ok"
        code, o, _ = s.get("/dashboard/canary_overview")
        assert code == 200 and o["rollback_required"] is True and o["reasons"][0].startswith("error_rate_5m: ")
        h = s.get("/dashboard/health_summary")[1]
        assert h["overall_health"] == "unhealthy" and h["components"]["error_rate_5m"]["health"] == "unhealthy"
    finally:
        s.close()


def test_no_data_nan_and_errors_are_unknown(prometheus: Prometheus) -> None:
    """An empty result, NaN, a range vector or a bad query is unknown (never ok), recommending rollback_unverifiable."""
    extra = "".join(
        f'\n[[checks]]\nname = "{name}"\nquery = \'{query}\'\ncomparison = "<"\nthreshold = 1\n'
        f'recommendation = "rollback_{name}"\n'
        for name, query in [
            ("absent", 'no_such_metric{service="x"}'),
            ("nan", "0/0"),
            ("range", 'http_requests_total{service="odd"}[1m]'),
            ("bad_query", "sum(("),
        ]
    )
    config = load_checks(str(prometheus.checks_file("odd", extra=extra)))
    results = {r.name: r for r in evaluate(config)}
    for name, detail in [
        ("absent", "no data"),
        ("nan", "NaN"),
        ("range", "not an instant vector"),
        ("bad_query", "HTTP 400"),
    ]:
        r = results[name]
        assert r.status == "unknown" and r.recommendation == "rollback_unverifiable" and detail in r.detail, r
        assert r.value is None


def _offline_config(tmp_path: Path, url: str, timeout: float = 0.5) -> Path:
    path = tmp_path / "checks.toml"
    path.write_text(
        f'[prometheus]\nurl = "{url}"\ntimeout_seconds = {timeout}\n'
        '[[checks]]\nname = "error_rate_5m"\nquery = "up"\ncomparison = "<"\nthreshold = 0.01\n'
        'recommendation = "rollback_error_rate"\n'
    )
    return path


def test_prometheus_unreachable_is_unknown(tmp_path: Path, signed: Signed) -> None:
    """Nothing listening on Prometheus's port: the check is unknown and canary_ok false."""
    checks = make_cached_checks(load_checks(str(_offline_config(tmp_path, f"http://127.0.0.1:{free_port()}"))))
    s = Served(signed.verify, checks=checks)
    try:
        code, v, _ = s.get("/canary_check")
        assert code == 200 and v["canary_ok"] is False and v["status"] == "unknown"
        assert v["recommendation"] == "rollback_unverifiable" and "Prometheus query failed" in v["summary"]
        assert s.get("/dashboard/health_summary")[1]["overall_health"] == "unknown"
    finally:
        s.close()


def test_a_hanging_prometheus_times_out(tmp_path: Path) -> None:
    """A Prometheus that accepts and never answers (or trickles) gives unknown within the timeout."""
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen()
        config = load_checks(str(_offline_config(tmp_path, f"http://127.0.0.1:{hang.getsockname()[1]}")))
        t0 = time.monotonic()
        [result] = evaluate(config)
        elapsed = time.monotonic() - t0
    assert result.status == "unknown" and "did not answer within 0.5 s" in result.detail
    assert elapsed < 10


def test_checks_file_is_validated(tmp_path: Path) -> None:
    """Typos, a missing URL, a non-rollback recommendation, a duplicate name or a FIFO are refused."""
    good = _offline_config(tmp_path, "http://127.0.0.1:9090").read_text()
    bad = {
        "unknown key": good.replace("threshold", "treshold"),
        "scheme": good.replace("http://127.0.0.1:9090", "file:///etc/passwd"),
        "recommendation": good.replace('"rollback_error_rate"', '"proceed"'),
        "comparison": good.replace('comparison = "<"', 'comparison = "=="'),
        "duplicate": good + good[good.index("[[checks]]") :],
        "no checks": good[: good.index("[[checks]]")],
        "integrity name": good.replace('name = "error_rate_5m"', 'name = "integrity"'),
    }
    for why, text in bad.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_checks(str(path))
            pytest.fail(why)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_checks(str(fifo))
    path = tmp_path / "shared.toml"
    path.write_text(good)
    path.chmod(0o666)
    with pytest.raises(Exception, match="writable by group or others"):
        load_checks(str(path))


def test_the_plan_gate_commands_verbatim(signed: Signed, prometheus: Prometheus) -> None:
    """The rollout plan's two curl | jq commands against `serve --checks`, under set -euo pipefail."""
    curl = require_tool("curl", "curl")
    require_tool("jq", "jq")
    port = free_port()
    checks = prometheus.checks_file("gate")
    proc = serve(signed, f"127.0.0.1:{port}", "--checks", str(checks))
    gate = (
        'curl -sf -H "Authorization: Bearer $CANARY_TOKEN" http://localhost:8000/canary_check '
        "| jq -e '.canary_ok==true'"
    ).replace("8000", str(port))
    show = (
        'curl -s  -H "Authorization: Bearer $CANARY_TOKEN" http://localhost:8000/canary_check | jq .canary_ok'
    ).replace("8000", str(port))

    def sh(command: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{os.path.dirname(curl)}:{os.environ['PATH']}", "CANARY_TOKEN": token}
        return subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{command}"], env=env, capture_output=True, text=True, timeout=60
        )

    try:
        wait_for_port(port, proc)
        wait_until("gate passes", lambda: {"rc": sh(gate).returncode}, lambda r: r["rc"] == 0)
        assert sh(show).stdout.strip() == "true"
        assert sh(gate, token="wrong-token-0123456789").returncode != 0  # 403: curl -f fails
        with prometheus.exporter.lock:
            prometheus.exporter.error_fraction["gate"] = 0.5
        r = wait_until("gate fails", lambda: {"rc": sh(gate).returncode}, lambda r: r["rc"] != 0)
        assert r["rc"] == 1  # jq -e: the body said canary_ok false
        assert sh(show).stdout.strip() == "false"
    finally:
        stop(proc)
    assert sh(gate).returncode != 0  # nothing listening: curl fails, pipefail keeps the failure


def test_the_documented_checks_file_loads(tmp_path: Path) -> None:
    """The plan's checks file in docs/howto-canary.md is valid: three checks with their own rollbacks."""
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "howto-canary.md").read_text()
    block = re.search(r"<!-- canary-checks -->\n```toml\n(.*?)```\n<!-- /canary-checks -->", doc, re.DOTALL)
    assert block is not None
    path = tmp_path / "canary-checks.toml"
    path.write_text(block.group(1))
    config = load_checks(str(path))
    assert [(c.name, c.comparison, c.threshold, c.recommendation) for c in config.checks] == [
        ("error_rate_5m", "<", 0.01, "rollback_error_rate"),
        ("latency_p95_5m", "<", 0.5, "rollback_latency"),
        ("health_failure_rate_5m", "<", 0.05, "rollback_health"),
    ]
