"""A seeded, reproducible tree shaped like an installed Python service (cached between runs).

~3,000 files: mostly 1-50 KB sources and metadata (log-uniform sizes), a dozen shared
libraries of 1-30 MB, about 100 MB in all, spread over package-like directories.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path

CACHE = Path(os.environ.get("DURI_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
_EXTS = [".py"] * 8 + [".pyi", ".txt", ".json", ".cfg", "", ".html", ".pem"]


def _sizes(rng: random.Random, files: int, libs: int, lib_bytes: int) -> tuple[list[int], list[int]]:
    small = [int(math.exp(rng.uniform(math.log(1024), math.log(50 * 1024)))) for _ in range(files - libs)]
    raw = [math.exp(rng.uniform(math.log(1 << 20), math.log(30 << 20))) for _ in range(libs)]
    scale = lib_bytes / sum(raw) if raw else 0
    big = [min(30 << 20, max(1 << 20, int(r * scale))) for r in raw]
    return small, big


def make_tree(
    files: int = 3000, libs: int = 12, lib_bytes: int = 64 << 20, seed: int = 20261126, root: Path | None = None
) -> Path:
    """Create (or reuse) the tree; returns its root. Content is random, so incompressible."""
    name = f"tree-{files}-{libs}-{lib_bytes}-{seed}"
    root = root or CACHE / name
    marker = root.parent / f"{name}.done"
    if marker.exists() and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    small, big = _sizes(rng, files, libs, lib_bytes)
    packages = max(1, files // 25)
    dirs = []
    for p in range(packages):
        depth = rng.choice([1, 1, 2, 2, 3])
        parts = [f"pkg{p:03d}"] + [f"sub{rng.randrange(4)}" for _ in range(depth - 1)]
        dirs.append(Path(*parts))
    block = rng.randbytes(1 << 20)
    for i, size in enumerate(small):
        d = root / "site-packages" / rng.choice(dirs)
        d.mkdir(parents=True, exist_ok=True)
        off = rng.randrange(len(block) - min(size, len(block)) + 1)
        data = (block[off:] + block)[:size] if size <= len(block) else rng.randbytes(size)
        # make each file unique so no two share a hash
        data = i.to_bytes(4, "little") + data[4:]
        (d / f"m{i:05d}{rng.choice(_EXTS)}").write_bytes(data)
    libdir = root / "site-packages" / "_libs"
    libdir.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(big):
        (libdir / f"lib{i:02d}.cpython-311-x86_64-linux-gnu.so").write_bytes(rng.randbytes(size))
    marker.write_text("ok\n")
    return root


def tree_stats(root: Path) -> tuple[int, int]:
    count = total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            count += 1
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return count, total


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    r = make_tree(n)
    c, t = tree_stats(r)
    print(f"{r}: {c:,} files, {t / 1e6:.1f} MB")
