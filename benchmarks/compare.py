"""Side-by-side timing: duri-integrity vs b3sum --check vs sha256sum -c on the same tree.

One run, interleaved rounds (each round runs every command once, in a shuffled
order), medians and ratios to b3sum. Whole-process timings use a clean virtual
environment with the project installed, so they measure this tool rather than
whatever the developer's interpreter imports at start-up.

    python benchmarks/compare.py [--rounds 15] [--files 3000] [--cold] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
# The checkout's root, so `benchmarks` imports as the package it is (as under pytest and mypy);
# appended, so the duri_integrity measured is still the one on the path (installed or PYTHONPATH).
sys.path.append(str(PROJECT))

from benchmarks.treegen import CACHE, make_tree, tree_stats  # noqa: E402

VERIFY_IMPORTS = (
    "import duri_integrity.cli, duri_integrity.cli.verify, duri_integrity.verify, "
    "cryptography.hazmat.primitives.asymmetric.ed25519"
)


def ensure_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, capture_output=True)
        if not shutil.which(name):
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, capture_output=True)
    path = shutil.which(name)
    if not path:
        sys.exit(f"{name} is not installed and could not be installed (apt-get install {package})")
    return path


def bench_venv() -> Path:
    """A clean venv with the project installed (rebuilt when the package sources change)."""
    venv = CACHE / "venv"
    stamp = venv / ".source-stamp"
    sources = [
        *sorted((PROJECT / "duri_integrity").rglob("*.py")),  # cli/ too
        *sorted((PROJECT / "duri_integrity").glob("*.c")),
        PROJECT / "pyproject.toml",
        PROJECT / "hatch_build.py",
    ]
    digest = str(max(p.stat().st_mtime_ns for p in sources))
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--force-reinstall", "--no-deps", str(PROJECT)], check=True
    )
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(PROJECT)], check=True)
    stamp.write_text(digest)
    return venv


def can_drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}"
    )


def build_floor(work: Path, name: str = "floor") -> str | None:
    """Compile benchmarks/NAME.c (floor.c: the open/fstat/read/close floor, no hashing; walk_floor.c:
    quick mode's walk and lstat, no comparing); None without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        print(f"C floor ({name}): skipped (no C compiler)", file=sys.stderr)
        return None
    exe = work / name
    subprocess.run([gcc, "-O2", "-pthread", "-o", str(exe), str(HERE / f"{name}.c")], check=True)
    return str(exe)


def git_peer(tree: Path, work: Path) -> list[str] | None:
    """`git status` over the same tree (its index kept outside the tree): quick mode's stat-cache peer."""
    git = shutil.which("git")
    if not git:
        print("git status: skipped (git is not installed)", file=sys.stderr)
        return None
    base = [git, f"--git-dir={work / 'git'}", f"--work-tree={tree}", "-c", "core.untrackedCache=false"]
    if not (work / "git").exists():
        subprocess.run([git, "init", "-q", "--bare", str(work / "git")], check=True)
        subprocess.run([*base, "add", "-A"], check=True)
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run([*base, *ident, "commit", "-q", "-m", "tree"], check=True)
    subprocess.run([*base, "status", "--porcelain"], check=True, capture_output=True)  # refresh the index
    return [*base, "status", "--porcelain"]


def timed_stdin(cmd: list[str], stdin: Path, cwd: Path) -> float:
    with stdin.open("rb") as f:
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, stdin=f, stdout=subprocess.DEVNULL, check=False)
        dt = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"{cmd[0]} exited {r.returncode}")
    return dt


def timed(cmd: list[str], cwd: Path | None = None, expect: int = 0, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, env=env)
    dt = time.perf_counter() - t
    if r.returncode != expect:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--cold", action="store_true", help="also time with the page cache dropped (root only)")
    ap.add_argument("--cold-rounds", type=int, default=5)
    ap.add_argument("--markdown", type=Path, help="write the results table here as Markdown")
    ap.add_argument("--json", type=Path, help="write raw results here")
    args = ap.parse_args()

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    # Rollback state like a real host keeps it, but in the cache rather than /var/lib.
    os.environ["DURI_INTEGRITY_STATE_DIR"] = str(CACHE / "state")
    b3sum = ensure_tool("b3sum", "b3sum")
    sha256sum = ensure_tool("sha256sum", "coreutils")
    venv = bench_venv()
    cli = str(venv / "bin" / "duri-integrity")
    vpy = str(venv / "bin" / "python")

    tree = make_tree(args.files, libs=12 if args.files >= 1000 else 2)
    count, total = tree_stats(tree)
    work = CACHE / f"work-{tree.name}"
    work.mkdir(parents=True, exist_ok=True)
    sk, pk = work / "bench.key", work / "bench.pub"
    if not sk.exists():
        subprocess.run([cli, "keygen", "-s", str(sk), "-p", str(pk), "--force"], check=True, capture_output=True)
    manifest = work / "MANIFEST.json"
    subprocess.run(
        [cli, "build", str(tree), "-d", "bench", "-m", str(manifest), "-s", str(sk)], check=True, capture_output=True
    )
    rel_files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    (work / "files.txt").write_text("\n".join(rel_files) + "\n")
    b3_list, sha_list = work / "b3.txt", work / "sha256.txt"
    b3_list.write_bytes(subprocess.run([b3sum, *rel_files], cwd=tree, check=True, capture_output=True).stdout)
    sha_list.write_bytes(subprocess.run([sha256sum, *rel_files], cwd=tree, check=True, capture_output=True).stdout)
    build_out = work / "rebuilt.json"  # outside the tree: the tree stays as the other rows read it
    build_cmd = [cli, "build", str(tree), "-d", "bench", "-m", str(build_out), "-s", str(sk)]
    pure_env = {**os.environ, "DURI_INTEGRITY_NO_EXTENSION": "1"}

    verify_cmd = [cli, "verify", str(tree), "-d", "bench", "-m", str(manifest), "-p", str(pk), "-q"]
    quick_cmd = [*verify_cmd, "--quick", "--cache-dir", str(work / "cache")]
    commands: dict[str, Callable[[], float]] = {
        "duri-integrity verify (process)": lambda: timed(verify_cmd),
        "duri-integrity verify --quick (process)": lambda: timed(quick_cmd),
        "b3sum --quiet --check": lambda: timed([b3sum, "--quiet", "--check", str(b3_list)], cwd=tree),
        "sha256sum --quiet -c": lambda: timed([sha256sum, "--quiet", "-c", str(sha_list)], cwd=tree),
        # The whole release step as CI runs it: walk, hash, write the manifest and its signature
        # (both fsync-ed), with an unencrypted key (an encrypted one adds scrypt, by design).
        "duri-integrity build + sign (process)": lambda: timed(build_cmd),
        "duri-integrity build + sign, pure Python (process)": lambda: timed(build_cmd, env=pure_env),
        "b3sum FILES (hash only)": lambda: timed([b3sum, *rel_files], cwd=tree),
        "python -c pass (interpreter start)": lambda: timed([vpy, "-P", "-c", "pass"]),
        # What every whole-process verify pays before it looks at a file: the interpreter and the
        # imports a verification needs (the CLI's and the library's), and nothing else.
        "verify's imports only (process)": lambda: timed([vpy, "-P", "-c", VERIFY_IMPORTS]),
    }
    floor = build_floor(work)
    if floor:
        commands["C floor: open/fstat/read/close, no hash"] = lambda: timed_stdin([floor], work / "files.txt", tree)
    walk_floor = build_floor(work, "walk_floor")
    if walk_floor:
        commands["C floor: walk + lstat (quick mode's)"] = lambda: timed([walk_floor, str(tree)])
        # What a scanner on both cores could reach (quick mode's own scanner uses one thread).
        commands["C floor: walk + lstat, 2 threads"] = lambda: timed([walk_floor, "-j", "2", str(tree)])
    git_status = git_peer(tree, work)
    if git_status:
        commands["git status (stat cache, quick-mode peer)"] = lambda: timed(git_status)
    inproc = (
        "import sys, time, json\n"
        "from duri_integrity import verify_integrity\n"
        "rounds, quick = int(sys.argv[1]), sys.argv[2] == 'quick'; xs = []\n"
        "for _ in range(rounds + 2):\n"
        "    t = time.perf_counter()\n"
        f"    r = verify_integrity({str(tree)!r}, manifest={str(manifest)!r}, public_keys={str(pk)!r},"
        f" deployment='bench', use_config_file=False, quick=quick, cache_dir={str(work / 'cache')!r})\n"
        "    xs.append(time.perf_counter() - t)\n"
        "    assert r.status == 'VERIFIED', r.summary\n"
        "    assert r.mode == 'quick' or not quick, r.notes\n"
        "print(json.dumps({'first': xs[0], 'warm': xs[2:]}))\n"
    )
    results: dict[str, list[float]] = {name: [] for name in commands}
    inproc_variants = [("full", "", False), ("quick", " --quick", False)]
    has_ext = subprocess.run(
        [vpy, "-P", "-c", "from duri_integrity import speedups; print(speedups.available())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if has_ext == "True":  # the pure-Python path too, for comparison (DURI_INTEGRITY_NO_EXTENSION=1)
        inproc_variants += [("full", ", pure Python", True), ("quick", " --quick, pure Python", True)]
    for _, label, _ in inproc_variants:
        results[f"duri-integrity verify{label} (in-process)"] = []
        results[f"duri-integrity verify{label} (in-process, first call)"] = []
    for run in commands.values():  # warm the page cache and the venv's .pyc files
        run()
    for _ in range(args.rounds):
        order = list(commands)
        random.shuffle(order)
        for name in order:
            results[name].append(commands[name]())
        # In-process: a fresh interpreter runs several verifications; its later runs are warm.
        for mode, label, pure in inproc_variants:
            env = {**os.environ, "DURI_INTEGRITY_NO_EXTENSION": "1" if pure else ""}
            out = subprocess.run(
                [vpy, "-P", "-c", inproc, "3", mode], check=True, capture_output=True, text=True, env=env
            ).stdout
            got = json.loads(out)
            results[f"duri-integrity verify{label} (in-process)"].extend(got["warm"])
            results[f"duri-integrity verify{label} (in-process, first call)"].append(got["first"])

    cold: dict[str, list[float]] = {}
    if args.cold:
        if not can_drop_caches():
            print("cold cache: skipped (cannot write /proc/sys/vm/drop_caches here)", file=sys.stderr)
        else:
            cold_inproc = (
                "import sys, time\n"
                "from duri_integrity import verify_integrity\n"
                "import duri_integrity.verify, duri_integrity.keys, cryptography.hazmat.primitives.asymmetric.ed25519\n"
                "print('ready', flush=True); sys.stdin.readline()\n"
                "t = time.perf_counter()\n"
                f"r = verify_integrity({str(tree)!r}, manifest={str(manifest)!r}, public_keys={str(pk)!r},"
                " deployment='bench', use_config_file=False)\n"
                "assert r.status == 'VERIFIED', r.summary\n"
                "print(time.perf_counter() - t)\n"
            )

            def inproc_cold() -> float:
                proc = subprocess.Popen(
                    [vpy, "-P", "-c", cold_inproc], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdout.readline()
                drop_caches()
                proc.stdin.write("go\n")
                proc.stdin.flush()
                elapsed = float(proc.stdout.readline())
                proc.wait()
                return elapsed

            cold_cmds = {
                "duri-integrity verify (in-process), cold": inproc_cold,
                "duri-integrity verify (process), cold": lambda: timed(verify_cmd),
                "duri-integrity verify --workers 8, cold": lambda: timed([*verify_cmd, "--workers", "8"]),
                "b3sum --quiet --check, cold": commands["b3sum --quiet --check"],
            }
            if floor:
                cold_cmds["C floor: open/fstat/read/close, cold"] = commands["C floor: open/fstat/read/close, no hash"]
                # What many readers win from a disk (the verifier's readers join up to 16 from a cold cache).
                cold_cmds["C floor, 16 threads, cold"] = lambda: timed_stdin(
                    [floor, "-j", "16"], work / "files.txt", tree
                )
            cold = {k: [] for k in cold_cmds}
            for _ in range(args.cold_rounds):
                for name in random.sample(list(cold_cmds), len(cold_cmds)):
                    if name != "duri-integrity verify (in-process), cold":
                        drop_caches()
                    cold[name].append(cold_cmds[name]())

    ref = statistics.median(results["b3sum --quiet --check"])
    ref_hash = statistics.median(results["b3sum FILES (hash only)"])
    rows = []
    for name, xs in list(results.items()) + list(cold.items()):
        med = statistics.median(xs)
        if name.endswith(", cold"):
            base = statistics.median(cold["b3sum --quiet --check, cold"])
            ratio = f"{med / base:.2f}x b3sum --check cold"
        elif name.startswith("duri-integrity build"):
            ratio = f"{med / ref_hash:.2f}x b3sum FILES"
        else:
            ratio = f"{med / ref:.2f}x b3sum --check"
        rows.append((name, med * 1000, min(xs) * 1000, len(xs), ratio))
    header = (
        f"Tree: {count:,} files, {total / 1e6:.1f} MB (benchmarks/treegen.py, seeded). "
        f"Machine: {machine()}. C extension: {'built' if has_ext == 'True' else 'not built'}. "
        f"Load average before the run: {load_before}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    print(header)
    print(f"{'command':62s} {'median ms':>10s} {'min ms':>8s} {'runs':>5s}  ratio")
    for name, med, mn, n, ratio in rows:
        print(f"{name:62s} {med:10.1f} {mn:8.1f} {n:5d}  {ratio}")
    if args.markdown:
        lines = [header, "", "| command | median | min | runs | ratio |", "|---|---:|---:|---:|---|"]
        lines += [f"| {n} | {m:.1f} ms | {mn:.1f} ms | {k} | {r} |" for n, m, mn, k, r in rows]
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results, "cold": cold}, indent=1))


if __name__ == "__main__":
    main()
