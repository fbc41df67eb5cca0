"""Long-running coverage-guided fuzzing of the parsers (not part of the test suite).

    pip install atheris
    python tests/fuzz_atheris.py -atheris_runs=200000          # manifest decoder
    python tests/fuzz_atheris.py --target signature -max_total_time=600

Any exception other than the package's own errors is a finding and stops the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from duri_integrity.errors import ManifestError, SignatureError
    from duri_integrity.keys import generate_keypair, load_secret_key, load_trusted_keys, sign_bytes, verify_signature
    from duri_integrity.manifest import decode_manifest


def _manifest(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        decode_manifest(data)


def _signature_target() -> Callable[[bytes], None]:
    d = tempfile.mkdtemp()
    generate_keypair(os.path.join(d, "k.key"), os.path.join(d, "k.pub"))
    trusted = load_trusted_keys([os.path.join(d, "k.pub")])
    good = sign_bytes(b"payload", load_secret_key(os.path.join(d, "k.key")), "serial:1")

    def target(data: bytes) -> None:
        try:
            verify_signature(b"payload", data, trusted)
        except SignatureError:
            return
        if data.splitlines()[1:] != good.splitlines()[1:]:
            raise AssertionError("a changed signature verified")

    return target


def main() -> None:
    args = list(sys.argv)
    target: Callable[[bytes], None] = _manifest
    if "--target" in args:
        i = args.index("--target")
        name = args[i + 1]
        del args[i : i + 2]
        if name == "signature":
            target = _signature_target()
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
