"""A cold-cache first call split into its steps, with the metadata warming on and off, interleaved.

Each round starts a fresh interpreter per side, imports the library, drops the page cache
(root only) and times one ``verify_integrity()`` on the benchmark tree, with the trust step,
the walk, the hashing step and the end-of-run check timed apart. "off" replaces the warming
with nothing in that process; everything else is the same code. Run compare.py once first
(it builds the tree and the signed manifest this uses).

    python benchmarks/cold_phases.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))

from benchmarks.compare import bench_venv, can_drop_caches, drop_caches  # noqa: E402
from benchmarks.treegen import CACHE  # noqa: E402

CHILD = r"""
import sys, time
from duri_integrity import compare, scan, verify, verify_integrity
import duri_integrity.keys, cryptography.hazmat.primitives.asymmetric.ed25519  # as compare.py's cold row
tree, manifest, key, side, state = sys.argv[1:6]
spent = {}
def timed(owner, name, label):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)
timed(verify, "_trusted", "trust")
timed(compare, "_walk_any", "walk")
timed(compare._Comparison, "hash", "hash")
timed(compare._Comparison, "unchanged_since", "end")
if side == "off":
    verify.warm_metadata = lambda root: scan.not_warming
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
r = verify_integrity(tree, manifest=manifest, public_keys=key, deployment="bench", use_config_file=False,
                     state_dir=state)
assert r.status == "VERIFIED", r.summary
spent["total"] = time.perf_counter() - t
print(" ".join(f"{k}={v * 1000:.2f}" for k, v in spent.items()), flush=True)
"""


def one(python: str, side: str, tree: Path, work: Path) -> dict[str, float]:
    args = [str(tree), str(work / "MANIFEST.json"), str(work / "bench.pub"), side, str(work / "cold-state")]
    proc = subprocess.Popen(
        [python, "-P", "-c", CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()
    drop_caches()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out = proc.stdout.readline()
    if proc.wait() != 0 or not out:
        sys.exit(f"the {side} run failed")
    return {k: float(v) for k, v in (kv.split("=") for kv in out.split())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if not can_drop_caches():
        sys.exit("cold_phases: needs root (writes /proc/sys/vm/drop_caches)")
    trees = sorted(p for p in CACHE.glob("tree-3000-*") if p.is_dir())
    works = [CACHE / f"work-{p.name}" for p in trees]
    if not trees or not (works[0] / "MANIFEST.json").exists():
        sys.exit("cold_phases: run benchmarks/compare.py once first (it builds the tree and its manifest)")
    python = bench_venv() / "bin" / "python"  # this checkout's code, rebuilt if it changed
    (works[0] / "cold-state").mkdir(mode=0o700, exist_ok=True)
    load = os.getloadavg()[0]  # before: the cold runs' own readers, waiting on the disk, count in it
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for side in random.sample(list(results), 2):
            results[side].append(one(str(python), side, trees[0], works[0]))
    print(f"cold first call, medians of {args.rounds} interleaved rounds (ms); load before {load:.1f}")
    steps = ["total", "trust", "walk", "hash", "end"]
    print(f"{'warming':8s}" + "".join(f"{s:>9s}" for s in steps))
    for side, runs in results.items():
        print(f"{side:8s}" + "".join(f"{statistics.median(r[s] for r in runs):9.1f}" for s in steps))


if __name__ == "__main__":
    main()
