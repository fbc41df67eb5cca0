"""The canary verdict: integrity and the service checks, assembled into one answer.

``canary_ok`` is true only when integrity is VERIFIED and every configured
service check passed. A check that failed gives its own ``rollback_*``
recommendation; one that could not be evaluated (Prometheus down, no data,
NaN, a verification that is stuck or out of date) is ``unknown``, which is
never ok. Definite failures are named before unknowns, integrity first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .promcheck import CheckResult
    from .report import Report

__all__ = ["canary_overview", "canary_verdict", "health_summary", "integrity_check"]

_HEALTH = {"ok": "healthy", "failed": "unhealthy", "unknown": "unknown"}


def integrity_check(report: Report) -> dict[str, Any]:
    """The verification report as one check among the others."""
    status = {"VERIFIED": "ok", "FAILED": "failed", "UNTRUSTED": "failed"}.get(report.status, "unknown")
    return {
        "name": "integrity",
        "status": status,
        "recommendation": report.recommendation,
        "detail": f"{report.status}: {report.summary}",
        "integrity_verified": report.integrity_verified,
        "checked_at": report.checked_at,
    }


def canary_verdict(report: Report, results: list[CheckResult] | None) -> dict[str, Any]:
    """The /canary_check answer."""
    import msgspec

    checks = [integrity_check(report)] + [msgspec.to_builtins(r) for r in results or ()]
    failed = [c for c in checks if c["status"] == "failed"]
    unknown = [c for c in checks if c["status"] not in ("ok", "failed")]
    bad = failed + unknown
    ok = not bad
    if ok:
        services = len(checks) - 1
        summary = f"integrity verified; {services} service check{'s' if services != 1 else ''} passed"
        if results is None:
            summary = "integrity verified; no service checks configured"
    else:
        summary = "; ".join(f"{c['name']}: {c['detail']}" for c in bad)
    return {
        "canary_ok": ok,
        "recommendation": "proceed" if ok else bad[0]["recommendation"],
        "rollback_required": not ok and bad[0]["recommendation"].startswith("rollback_"),
        "status": "ok" if ok else ("failed" if failed else "unknown"),
        "summary": summary,
        "release": report.manifest.release if report.manifest is not None else None,
        "checked_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "integrity_verified": report.integrity_verified,
        "checks": checks,
    }


def canary_overview(verdict: dict[str, Any]) -> dict[str, Any]:
    """The /dashboard/canary_overview answer: what the rollout does, and why."""
    keys = ("rollback_required", "recommendation", "canary_ok", "status", "release", "checked_at")
    overview = {k: verdict[k] for k in keys}
    overview["reasons"] = [f"{c['name']}: {c['detail']}" for c in verdict["checks"] if c["status"] != "ok"]
    return overview


def health_summary(verdict: dict[str, Any]) -> dict[str, Any]:
    """The /dashboard/health_summary answer: healthy, unhealthy or unknown, per component and overall."""
    components = {
        c["name"]: {"health": _HEALTH.get(c["status"], "unknown"), "detail": c["detail"]} for c in verdict["checks"]
    }
    healths = {c["health"] for c in components.values()}
    overall = "unhealthy" if "unhealthy" in healths else ("unknown" if "unknown" in healths else "healthy")
    return {
        "overall_health": overall,
        "components": components,
        "release": verdict["release"],
        "checked_at": verdict["checked_at"],
    }
