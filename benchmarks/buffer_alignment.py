"""How fast the kernel copies file data from the page cache into a buffer, by where the buffer starts.

Reads the benchmark tree's files over 1 MiB (the shared libraries, most of its bytes) in 1 MiB
reads, as the hasher reads large files, into a buffer that starts at each of several offsets past
a page boundary, and prints the best of five passes. Offset 16 is where glibc puts the data of a
malloc this large (a bytearray's); the tool's read buffers are anonymous mappings, offset 0
(readahead.page_buffer). Warm cache: the tree is read once first.

    python benchmarks/buffer_alignment.py [--offsets 0 16 32 64 2048]
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.treegen import make_tree

CHUNK = (1 << 20) + 1  # hashing.CHUNK: 1 MiB and the byte that notices growth


def read_all(paths: list[Path], view: memoryview) -> float:
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while os.readv(fd, [view]):
                pass
        finally:
            os.close(fd)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offsets", type=int, nargs="+", default=[0, 16, 32, 64, 2048])
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    tree = make_tree(3000)
    big = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size > 1 << 20)
    total = sum(p.stat().st_size for p in big)
    buf = mmap.mmap(-1, CHUNK + 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with memoryview(buf) as whole:
        read_all(big, whole[:CHUNK])  # the page cache warm
        print(f"{len(big)} files over 1 MiB, {total / 2**20:.0f} MiB, read in {CHUNK}-byte reads")
        for offset in args.offsets:
            with whole[offset : offset + CHUNK] as view:
                best = min(read_all(big, view) for _ in range(args.passes))
            print(f"buffer {offset:5d} bytes past a page: {best * 1000:6.2f} ms  {total / best / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
