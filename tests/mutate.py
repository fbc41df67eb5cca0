"""A small AST mutation tester: do the tests notice when a check is broken?

    python3 -m tests.mutate trust state manifest [--sample N] [--seed S] [--timeout T] [--jobs J]

For each module it parses the source with :mod:`ast`, generates mutants with a few
standard operators (below), and for each mutant runs the tests mapped to that module
(:data:`TESTS`) against a private copy of the checkout with that one file changed. A
mutant is *killed* when the tests fail or time out, *survives* when they pass, and is
*invalid* when the mutated package cannot even be imported (not counted in the score).

Why not mutmut: most of our tests run the real console script or ``python -m
duri_integrity`` in a subprocess, and mutmut's in-place trampolines do not reach those.
Here every mutant is a real file in a real copy: ``tests/conftest.py`` puts the copy
first on the subprocesses' PYTHONPATH (it locates the checkout from its own resolved
path, which is why ``tests/`` is copied, never symlinked).

A mutant is named ``module:line:col:operator``; the name depends only on the source, so
a survivor keeps its name from run to run (docs/mutation.md lists them by that name).
The JSON result (``--out``, default ``mutation-result.json``) holds every mutant.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import difflib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "duri_integrity"

# The tests that exercise each module, fastest and most direct first (pytest -x stops at the
# first failure, so a killed mutant usually costs only the first file or two).
TESTS: dict[str, list[str]] = {
    "trust": [
        "tests/test_trust_pipeline.py",
        "tests/test_rollback.py",
        "tests/test_attacks.py",
        "tests/test_verify.py",
        "tests/test_keys.py",
        "tests/test_config.py",
        "tests/test_hostile.py",
        "tests/test_doctor.py",
    ],
    "state": ["tests/test_state.py", "tests/test_rollback.py", "tests/test_attacks.py", "tests/test_hostile.py"],
    "manifest": [
        "tests/test_manifest_rules.py",
        "tests/test_manifest.py",
        "tests/test_properties.py",
        "tests/test_tamper.py",
        "tests/test_verify.py",
    ],
    "config": [
        "tests/test_config_rules.py",
        "tests/test_config.py",
        "tests/test_own_files.py",
        "tests/test_attacks.py",
        "tests/test_cli.py",
    ],
    "verify": [
        "tests/test_verify_rules.py",
        "tests/test_verify.py",
        "tests/test_tamper.py",
        "tests/test_own_files.py",
        "tests/test_quick.py",
    ],
    "compare": [
        "tests/test_verify_rules.py",  # verify's comparison logic: counts, quick mode, walk errors
        "tests/test_compare.py",
        "tests/test_verify.py",
        "tests/test_tamper.py",
        "tests/test_quick.py",
        "tests/test_faults.py",
    ],
    "settle": [
        "tests/test_settle.py",
        "tests/test_verify_rules.py",
        "tests/test_compare.py",
        "tests/test_stability_rule.py",
    ],
    "walk": [
        "tests/test_walk_rules.py",
        "tests/test_trust_pipeline.py",  # inside_root decides whether a trust anchor lies in the tree
        "tests/test_tamper.py",
        "tests/test_verify.py",
        "tests/test_hostile.py",
        "tests/test_own_files.py",
    ],
    "hashing": [
        "tests/test_hashing_faults.py",
        "tests/test_stability_rule.py",
        "tests/test_hashing.py",
        "tests/test_faults.py",
        "tests/test_speedups.py",
        "tests/test_tamper.py",
        "tests/test_verify.py",
        "tests/test_hostile.py",
    ],
    "readahead": [
        "tests/test_readahead_rules.py",
        "tests/test_hashing_faults.py",
        "tests/test_speedups.py",
        "tests/test_faults.py",
        "tests/test_hashing.py",
    ],
    "schedule": [
        "tests/test_hashing_faults.py",
        "tests/test_hashing.py",
        "tests/test_faults.py",
        "tests/test_speedups.py",
    ],
    "report": [
        "tests/test_report_rules.py",
        "tests/test_verify.py",
        "tests/test_cli.py",
        "tests/test_observability.py",
        "tests/test_server.py",
    ],
}

_COMPARE_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_ARITH_FLIPS: dict[type[ast.operator], type[ast.operator]] = {ast.Add: ast.Sub, ast.Sub: ast.Add}


@dataclass
class Mutant:
    module: str
    line: int
    col: int
    operator: str
    source: str
    """The whole mutated module."""
    diff: str = ""
    status: str = "pending"  # killed | survived | timeout | invalid
    seconds: float = 0.0

    @property
    def ident(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.operator}"


def _offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


class _Generator(ast.NodeVisitor):
    """Collects (node span, replacement text, operator name) for every mutation site."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.starts = _offsets(source)
        self.sites: list[tuple[int, int, int, int, str, str]] = []
        self._skip: set[int] = set()  # ids of nodes whose constants must not change

    # -- helpers -----------------------------------------------------------------------

    def _add(self, node: ast.expr | ast.stmt, text: str, op: str, *, end: ast.expr | ast.stmt | None = None) -> None:
        last = end or node
        self.sites.append((node.lineno, node.col_offset, last.end_lineno or 0, last.end_col_offset or 0, text, op))

    def _expr(self, node: ast.expr, new: ast.expr, op: str) -> None:
        # Parenthesised, so the replacement keeps its meaning whatever surrounds it.
        self._add(node, "(" + ast.unparse(new) + ")", op)

    def _skip_tree(self, node: ast.AST | None) -> None:
        if node is not None:
            self._skip.update(id(n) for n in ast.walk(node))

    # -- statements --------------------------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(getattr(t, "id", "") in ("__all__", "__slots__") for t in node.targets):
            return  # names, not behaviour (a broken __slots__ only fails at import: invalid)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
            self._skip_tree(arg.annotation)
        self._skip_tree(node.returns)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._skip_tree(node.annotation)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self._add(node.body[0], "pass", "if_body->pass", end=node.body[-1])
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self._add(node, "pass", "raise->pass")
        # Exception messages are not behaviour: changing their text would only add noise.
        if isinstance(node.exc, ast.Call):
            for a in node.exc.args:
                self._skip_tree(a)
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return None", "return->None")
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call):
            self._add(node, "pass", "call->pass")
        elif isinstance(node.value, ast.Constant):
            return  # a docstring (module, class, function or attribute): not behaviour
        self.generic_visit(node)

    def visit_Break(self, node: ast.Break) -> None:
        self._add(node, "continue", "break->continue")

    def visit_Continue(self, node: ast.Continue) -> None:
        self._add(node, "break", "continue->break")

    # -- expressions -------------------------------------------------------------------

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            flip = _COMPARE_FLIPS.get(type(op))
            if flip is not None:
                ops = list(node.ops)
                ops[i] = flip()
                name = f"{type(op).__name__}->{flip.__name__}" + (f"#{i}" if len(node.ops) > 1 else "")
                self._expr(node, ast.Compare(node.left, ops, node.comparators), name)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._expr(node, ast.BoolOp(other, node.values), f"{type(node.op).__name__}->{type(other).__name__}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._expr(node, node.operand, "not->drop")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        flip = _ARITH_FLIPS.get(type(node.op))
        if flip is not None:
            self._expr(node, ast.BinOp(node.left, flip(), node.right), f"{type(node.op).__name__}->{flip.__name__}")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._skip_tree(node)  # f-string pieces are not standalone constants
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if id(node) in self._skip:
            return
        v = node.value
        if isinstance(v, bool):
            self._add(node, repr(not v), f"{v}->{not v}")
        elif isinstance(v, int):
            self._add(node, repr(v + 1), "int->n+1")
            if v != 0:
                self._add(node, "0", "int->0")
        elif isinstance(v, str) and v:
            self._add(node, '""', "str->empty")


def generate(module: str, source: str) -> list[Mutant]:
    """Every mutant of one module's source, in source order; each differs in exactly one place."""
    gen = _Generator(source)
    gen.visit(ast.parse(source))
    out, seen = [], set()
    for line, col, end_line, end_col, text, op in gen.sites:
        a, b = gen.starts[line - 1] + col, gen.starts[end_line - 1] + end_col
        mutated = source[:a] + text + source[b:]
        name = (line, col, op)
        if mutated == source or name in seen:
            continue
        seen.add(name)
        diff = "".join(
            difflib.unified_diff(
                source.splitlines(keepends=True), mutated.splitlines(keepends=True), n=0, lineterm="\n"
            )
        )
        diff = "\n".join(ln for ln in diff.splitlines() if ln[:3] not in ("---", "+++"))
        out.append(Mutant(module, line, col, op, mutated, diff))
    return out


# -- running ---------------------------------------------------------------------------------


def make_template(where: Path) -> Path:
    """A copy of everything the tests read (package, tests, docs, pyproject), with bytecode compiled."""
    template = where / "template"
    template.mkdir()
    for name in (PACKAGE, "tests", "docs", "pyproject.toml", "README.md", "CHANGELOG.md", "noxfile.py"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, template / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        elif src.exists():
            shutil.copy2(src, template / name)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(template / PACKAGE)], check=True)
    return template


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(checkout)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant's bytecode must never be reused for another
    return env


def _imports(checkout: Path, module: str) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{module}, {PACKAGE}.cli"],
        cwd=checkout,
        env=_env(checkout),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def test_files(module: str, checkout: Path) -> list[str]:
    """The mapped test files that exist in the copy (a mapping may name a file before it lands)."""
    return [f for f in TESTS[module] if (checkout / f).exists()]


def run_mutant(m: Mutant, template: Path, work: Path, timeout: float) -> Mutant:
    """Copy the template, write the mutant, run its tests; set ``status`` and ``seconds``."""
    started = time.monotonic()
    checkout = Path(tempfile.mkdtemp(prefix="m-", dir=work))
    try:
        shutil.copytree(template, checkout, dirs_exist_ok=True, symlinks=True)
        target = checkout / PACKAGE / f"{m.module}.py"
        target.write_text(m.source)
        for stale in (checkout / PACKAGE / "__pycache__").glob(f"{m.module}.*.pyc"):
            stale.unlink()
        if not _imports(checkout, m.module):
            m.status = "invalid"
            return m
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files(m.module, checkout)]
        try:
            done = subprocess.run(
                cmd, cwd=checkout, env=_env(checkout), capture_output=True, timeout=timeout, check=False
            )
            m.status = "survived" if done.returncode == 0 else "killed"
        except subprocess.TimeoutExpired:
            m.status = "timeout"
        return m
    finally:
        m.seconds = round(time.monotonic() - started, 1)
        shutil.rmtree(checkout, ignore_errors=True)


def baseline(template: Path, modules: list[str], timeout: float) -> None:
    """The unmutated tests must pass in the copy, or every mutant would look killed."""
    files = sorted({f for mod in modules for f in test_files(mod, template)})
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    done = subprocess.run(cmd, cwd=template, env=_env(template), capture_output=True, text=True, timeout=timeout * 4)
    if done.returncode != 0:
        sys.exit(f"mutate: the unmutated tests fail in the copy; fix that first:\n{done.stdout[-3000:]}")


_CANARY = """
import sys as _sys
if "pytest" not in _sys.modules:  # mutate.py self-check: only a subprocess of the tests gets here
    raise SystemExit(97)
"""


def self_check(template: Path, work: Path, timeout: float) -> None:
    """Prove the subprocess tests run the copy: a package that dies outside pytest must fail them."""
    checkout = work / "self-check"
    shutil.copytree(template, checkout, symlinks=True)
    init = checkout / PACKAGE / "__init__.py"
    init.write_text(init.read_text() + _CANARY)
    for stale in (checkout / PACKAGE / "__pycache__").glob("__init__.*.pyc"):
        stale.unlink()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests/test_cli.py"]
    done = subprocess.run(cmd, cwd=checkout, env=_env(checkout), capture_output=True, text=True, timeout=timeout)
    shutil.rmtree(checkout, ignore_errors=True)
    if done.returncode == 0 or "97" not in done.stdout:
        sys.exit(
            "mutate: a package that exits 97 in subprocesses did not fail the console-script tests, "
            "so they are not running the mutated copy"
        )


def summarise(results: list[Mutant], modules: list[str]) -> dict[str, dict[str, object]]:
    summary: dict[str, dict[str, object]] = {}
    for mod in modules:
        mine = [m for m in results if m.module == mod]
        counts = {s: sum(m.status == s for m in mine) for s in ("killed", "survived", "timeout", "invalid")}
        scored = counts["killed"] + counts["timeout"] + counts["survived"]
        score = round(100 * (counts["killed"] + counts["timeout"]) / scored, 1) if scored else None
        summary[mod] = {**counts, "score": score}
        print(
            f"{mod:10} killed {counts['killed']:4}  survived {counts['survived']:4}  timeout {counts['timeout']:3}"
            f"  invalid {counts['invalid']:3}  score " + (f"{score:5.1f}%" if score is not None else "  n/a")
        )
        for m in mine:
            if m.status == "survived":
                print(f"  SURVIVED {m.ident}\n" + "\n".join("    " + ln for ln in m.diff.splitlines()))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.mutate", description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="+", choices=sorted(TESTS), metavar="MODULE", help=", ".join(sorted(TESTS)))
    p.add_argument("--sample", type=int, default=0, help="at most N mutants per module, chosen at random (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0, so runs are comparable)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    p.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    p.add_argument("--only", action="append", default=[], help="run only the mutant with this name (repeatable)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--out", default="mutation-result.json", help="where to write the JSON result")
    args = p.parse_args(argv)

    mutants: list[Mutant] = []
    for mod in args.modules:
        mine = generate(mod, (REPO / PACKAGE / f"{mod}.py").read_text())
        if args.sample and len(mine) > args.sample:
            mine = sorted(random.Random(f"{args.seed}:{mod}").sample(mine, args.sample), key=lambda m: m.line)
        mutants += mine
    if args.only:
        mutants = [m for m in mutants if m.ident in args.only]
    if args.list:
        for m in mutants:
            print(m.ident, "\n" + "\n".join("    " + ln for ln in m.diff.splitlines()))
        return 0

    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `kill PID` still cleans up
    with tempfile.TemporaryDirectory(prefix="duri-mutate-") as tmp:
        template = make_template(Path(tmp))
        baseline(template, args.modules, args.timeout)
        self_check(template, Path(tmp), args.timeout)
        print(f"mutate: {len(mutants)} mutants, {args.jobs} jobs", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_mutant, m, template, Path(tmp), args.timeout) for m in mutants]
            try:
                for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                    m = fut.result()
                    print(f"[{n}/{len(mutants)}] {m.status:8} {m.seconds:6.1f}s {m.ident}", flush=True)
            except BaseException:
                # Stopped (Ctrl-C, SIGTERM): start no more mutants; the running ones finish and
                # the temporary copies are removed on the way out.
                pool.shutdown(cancel_futures=True)
                raise
    summary = summarise(mutants, args.modules)
    elapsed = round(time.monotonic() - started)
    print(f"mutate: {elapsed} s")
    Path(args.out).write_text(
        json.dumps(
            {
                "modules": args.modules,
                "sample": args.sample,
                "seed": args.seed,
                "seconds": elapsed,
                "summary": summary,
                "mutants": [{**asdict(m), "id": m.ident, "source": None} for m in mutants],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
