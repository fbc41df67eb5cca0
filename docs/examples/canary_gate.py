"""Gate one canary stage on the Python API.

    DURI_INTEGRITY_DEPLOYMENT=myservice python canary_gate.py RELEASE_DIR [PUBLIC_KEY]

Exit 0 to proceed to the next stage; 1 to roll this stage back. One line on
stderr says why, with the report's recommendation.
"""

import sys

from duri_integrity import verify_integrity


def gate(release_dir: str, public_key: str | None = None) -> bool:
    # The deployment this host runs comes from DURI_INTEGRITY_DEPLOYMENT (or the system config).
    r = verify_integrity(release_dir, public_keys=public_key)
    print(f"integrity {r['status']}: {r['summary']} -> {r['recommendation']}", file=sys.stderr)
    return r["recommendation"] == "proceed"


if __name__ == "__main__":
    sys.exit(0 if gate(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None) else 1)
