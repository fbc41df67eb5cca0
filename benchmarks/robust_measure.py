"""One-off measurements for the comparison core (not a test; numbers go in the commit/report).

    python benchmarks/robust_measure.py time            # verify_integrity() on the treegen tree, warm, median of 15
    python benchmarks/robust_measure.py rss [--json]    # peak RSS verifying a tree with 1,000,000 added empty files
    python benchmarks/robust_measure.py rss --all       # the same through compare(max_problems=None): every problem

Run it with PYTHONPATH pointing at the checkout to measure (the package is imported from there).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
# The checkout's root, so `benchmarks` imports as the package it is (as under pytest and mypy);
# appended, so the duri_integrity measured is still the one on the path (installed or PYTHONPATH).
sys.path.append(str(HERE.parent))

from benchmarks.treegen import CACHE, make_tree  # noqa: E402

if TYPE_CHECKING:
    from duri_integrity.report import Report


def _signed(root: Path, work: Path) -> tuple[str, str, str]:
    from duri_integrity.build import build_manifest, sign_manifest, write_atomic
    from duri_integrity.keys import generate_keypair

    sk, pk = work / "k.key", work / "k.pub"
    if not pk.exists():
        generate_keypair(str(sk), str(pk))
    manifest, sig = work / "MANIFEST.json", work / "MANIFEST.json.minisig"
    write_atomic(str(manifest), build_manifest(str(root), deployment="bench", release="bench").data)
    sign_manifest(str(manifest), str(sk))
    return str(manifest), str(sig), str(pk)


def _verify(root: Path, manifest: str, sig: str, pk: str, work: Path) -> Report:
    from duri_integrity import verify_integrity

    return verify_integrity(
        root,
        manifest=manifest,
        signature=sig,
        public_keys=[pk],
        deployment="bench",
        use_config_file=False,
        state_dir=str(work / "state"),
    )


def time_it() -> None:
    root = make_tree(3000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        m, s, pk = _signed(root, work)
        for _ in range(3):
            r = _verify(root, m, s, pk, work)
        assert r.status == "VERIFIED", r.summary
        runs, cpu = [], []
        for _ in range(15):
            t0, c0 = time.perf_counter(), time.process_time()
            _verify(root, m, s, pk, work)
            runs.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(
            f"{r.summary}; wall median {statistics.median(runs) * 1e3:.1f} ms, min {min(runs) * 1e3:.1f} ms; "
            f"CPU median {statistics.median(cpu) * 1e3:.1f} ms (15 runs; CPU time is less sensitive to a busy host)"
        )


def rss(as_json: bool) -> None:
    base = CACHE / "added-1m"
    root = base / "tree"
    work = base / "work"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        (root / "app").mkdir(parents=True)
        (root / "app" / "main.py").write_text("print(1)\n")
        work.mkdir()
        _signed(root, work)
        flood = root / "flood"
        for d in range(1000):
            sub = flood / f"d{d:04d}"
            sub.mkdir(parents=True)
            for f in range(1000):
                os.close(os.open(sub / f"f{f:04d}", os.O_CREAT | os.O_WRONLY, 0o644))
        (base / "done").write_text("ok\n")
    m, s, pk = str(work / "MANIFEST.json"), str(work / "MANIFEST.json.minisig"), str(work / "k.pub")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if "--all" in sys.argv:
        from duri_integrity.compare import compare
        from duri_integrity.manifest import decode_manifest_keys
        from duri_integrity.report import make_report
        from duri_integrity.settle import start_mark

        mf, keys = decode_manifest_keys(Path(m).read_bytes())
        real = os.path.realpath(root)
        out = compare(
            mf, keys, real, set(), None, None, False, max_problems=None, root_path=str(root), started=start_mark()
        )
        r = make_report(status="FAILED", root=str(root), problems=out.problems, tally=out.tally)
    else:
        r = _verify(root, m, s, pk, work)
    size = len(r.to_json()) if as_json else 0
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{r.summary[:80]}; problems listed {len(r.problems):,}; json {size / 1e6:.1f} MB; "
        f"peak RSS {peak / 1024:.0f} MB (at start {before / 1024:.0f} MB); {took:.1f} s"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["time"]:
        time_it()
    elif sys.argv[1:2] == ["rss"]:
        rss("--json" in sys.argv)
    else:
        sys.exit(__doc__)
