"""Scale check: per-file verification cost and peak memory on a 100,000-file tree vs 3,000.

Each measurement runs `duri-integrity verify` in a fresh process (the benchmark venv
when compare.py has built it, else the current interpreter) and reads its peak RSS.

    python benchmarks/scale.py [--files 100000] [--rounds 5]
    python benchmarks/scale.py --added 1000000   # peak RSS when that many empty files were added
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout's root, so `benchmarks` imports as the package it is (as under pytest and mypy);
# appended, so the duri_integrity measured is still the one on the path (installed or PYTHONPATH).
sys.path.append(str(HERE.parent))

from benchmarks.treegen import CACHE, make_tree, tree_stats  # noqa: E402


@functools.cache
def python() -> str:
    """The benchmark venv's interpreter, (re)built once per run: sources edited during a run
    must not reinstall the package between its measurements."""
    from benchmarks.compare import bench_venv

    return str(bench_venv() / "bin" / "python")


def prepare(files: int) -> tuple[Path, Path, Path]:
    tree = make_tree(files)
    work = CACHE / f"scale-{files}"
    work.mkdir(parents=True, exist_ok=True)
    sk, pk, manifest = work / "s.key", work / "s.pub", work / "MANIFEST.json"
    py = python()
    if not sk.exists():
        subprocess.run(
            [py, "-m", "duri_integrity", "keygen", "-s", str(sk), "-p", str(pk), "--force"],
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [py, "-m", "duri_integrity", "build", str(tree), "-d", "bench", "-m", str(manifest), "-s", str(sk)],
        check=True,
        capture_output=True,
    )
    return tree, manifest, pk


def measure(tree: Path, manifest: Path, pk: Path, quick: bool, expect: str = "VERIFIED") -> tuple[float, int]:
    """(in-process seconds reported by the tool, peak RSS in KiB of the whole process)."""
    code = (
        "import sys, time\n"
        "from duri_integrity import verify_integrity\n"
        f"r = verify_integrity({str(tree)!r}, manifest={str(manifest)!r}, public_keys={str(pk)!r}, deployment='bench',"
        f" use_config_file=False, quick={quick}, cache_dir={str(CACHE / 'scale-cache')!r})\n"
        f"assert r.status == {expect!r}, r.summary\n"
        "print(r.elapsed_seconds)\n"
    )
    proc = subprocess.Popen([python(), "-P", "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"verification failed: exit {proc.returncode}")
    return float(out), usage.ru_maxrss


def added(n: int) -> None:
    """Peak RSS of a full verification that finds ``n`` added empty files (memory must not grow with them)."""
    tree, manifest, pk = prepare(3000)
    extra = tree / "added-by-scale"
    extra.mkdir()
    try:
        for k in range(n):
            os.close(os.open(extra / f"f{k}", os.O_CREAT | os.O_WRONLY, 0o644))
        s, kib = measure(tree, manifest, pk, False, expect="FAILED")
        print(f"{n:,} added empty files: {s * 1000:.0f} ms, peak RSS {kib / 1024:.1f} MiB")
    finally:
        for name in os.listdir(extra):
            os.unlink(extra / name)
        extra.rmdir()


def main() -> None:
    os.environ["DURI_INTEGRITY_STATE_DIR"] = str(CACHE / "state")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--added", type=int, default=0, help="instead: peak RSS with this many added empty files")
    args = ap.parse_args()
    if args.added:
        added(args.added)
        return
    rows = []
    for n in (3000, args.files):
        t0 = time.perf_counter()
        tree, manifest, pk = prepare(n)
        count, total = tree_stats(tree)
        print(f"prepared {count:,} files, {total / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for quick in (False, True):
            measure(tree, manifest, pk, quick)  # warm the cache (and take the snapshot)
            xs, peaks = [], []
            for _ in range(args.rounds):
                s, kib = measure(tree, manifest, pk, quick)
                xs.append(s)
                peaks.append(kib)
            rows.append(
                (count, "quick" if quick else "full", statistics.median(xs), statistics.median(xs) / count, max(peaks))
            )
    print(f"{'files':>8s} {'mode':6s} {'median ms':>10s} {'us/file':>8s} {'peak RSS MiB':>13s}")
    for count, mode, med, per, kib in rows:
        print(f"{count:8,d} {mode:6s} {med * 1000:10.1f} {per * 1e6:8.2f} {kib / 1024:13.1f}")
    small = {m: per for c, m, _, per, _ in rows if c < args.files}
    for c, m, _, per, _ in rows:
        if c >= args.files:
            print(f"per-file cost ratio, {m}: {per / small[m]:.2f}x the 3,000-file tree's")


if __name__ == "__main__":
    main()
