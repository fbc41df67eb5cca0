"""Developer sessions: nox -s tests | lint | typing | bench | compare | docs | mutation."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (needs the minisign binary on PATH for the interop tests)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the benchmarks and this file (pinned in [test])."""
    session.install("-e", ".[test]")  # the tests' imports (pytest, hypothesis, ...) and YAML stubs
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark suite over the generated 3,000-file tree."""
    session.install("-e", ".[dev]")
    session.run(
        "pytest",
        "benchmarks",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-columns=min,median,max,rounds",
        *session.posargs,
    )


@nox.session
def compare(session: nox.Session) -> None:
    """Side-by-side whole-process timing against b3sum and sha256sum (installs b3sum if missing)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/compare.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Check the docs: links resolve, CI runs the README test command verbatim, exit codes agree."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_docs.py")


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the security-critical modules (tests/mutate.py; see docs/mutation.md).

    Sampled by default (40 mutants a module, seed 0: about half an hour on 2 cores); pass
    ``-- --sample 0`` for every mutant, or name modules: ``nox -s mutation -- trust state``.
    """
    session.install("-e", ".[test]")
    modules = ["trust", "verify", "compare", "settle", "manifest", "walk", "state", "hashing", "report"]
    args = list(session.posargs)
    named = [a for a in args if a in modules or a == "config"]
    options = [a for a in args if a not in named]
    if not any(o.startswith("--sample") for o in options):
        options = ["--sample", "40", *options]
    session.run("python", "-m", "tests.mutate", *(named or modules), *options)
