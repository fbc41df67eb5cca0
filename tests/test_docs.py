"""The docs stay true: links resolve, the test command is extractable, exit codes agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative Markdown link points at a file that exists."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run's last command is, character for character, the README's one test command."""
    block = re.search(
        r"<!-- test-command -->\n```sh\n(.*?)\n```\n<!-- /test-command -->", (ROOT / "README.md").read_text(), re.DOTALL
    )
    assert block is not None
    [command] = block.group(1).splitlines()
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert lines[-1] == command
    assert "pytest" in command and "DURI_INTEGRITY_NO_EXTENSION=1" in command  # both paths
    # CI runs no test or check that the README's command does not: nothing else may call pytest.
    assert not [ln for ln in lines[:-1] if "pytest" in ln and not ln.lstrip().startswith("#")]


def test_exit_codes_agree_everywhere() -> None:
    """README, docs/cli.md and the code give the same exit code for each status."""
    from duri_integrity.report import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    for status, code in EXIT_CODES.items():
        assert re.search(rf"\| `{status}` \|.*\| {code} \|", readme), status
        assert re.search(rf"\| {code} \| `{status}` \|", cli_doc), status


SHELL_LANGS = ("sh", "bash", "shell", "console")


def _fenced_blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, indented ones included."""
    pattern = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    return [(m.group(2), m.group(3)) for m in pattern.finditer(doc.read_text())]


# The tool's output piped (possibly through tee and friends) into jq, on one logical line.
_TOOL_INTO_JQ = re.compile(r"duri-integrity\b[^\n]*\|[^\n]*\bjq\b")


def _fails_open(lang: str, body: str) -> bool:
    """A block pipes the tool into jq while nothing makes the pipeline's status the tool's."""
    joined = body.replace("\\\n", " ")
    if not _TOOL_INTO_JQ.search(joined):
        return False
    if lang in ("yaml", "yml"):  # GitHub Actions runs `shell: bash` steps as bash -eo pipefail
        return "shell: bash" not in body and "pipefail" not in body
    return "pipefail" not in body


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "CHANGELOG.md"], ids=lambda p: p.name)
def test_shell_blocks_fail_closed(doc: Path) -> None:
    """No shell block pipes duri-integrity into jq without pipefail (jq 1.6 exits 0 on empty input)."""
    for lang, body in _fenced_blocks(doc):
        if lang in (*SHELL_LANGS, "yaml", "yml"):
            assert not _fails_open(lang, body), f"{doc.name}: fails open:\n{body}"


def test_fail_open_detector_catches_the_old_recipes() -> None:
    """The scanner flags the pipelines the review found (so the test above can fail)."""
    assert _fails_open("sh", "duri-integrity verify \"$d\" --json | jq -e '.integrity_verified' > /dev/null\n")
    assert _fails_open("yaml", "run: duri-integrity verify d --json | tee i.json | jq -e '.integrity_verified'\n")
    assert not _fails_open("bash", "set -euo pipefail\nduri-integrity verify d --json | jq -e .x\n")
    assert not _fails_open("sh", "duri-integrity verify d --json > r.json || exit\njq -e .x r.json\n")


def _github_steps() -> list[dict[str, object]]:
    import yaml

    [body] = [b for lang, b in _fenced_blocks(ROOT / "docs" / "howto-ci.md") if lang == "yaml"]
    workflow = yaml.safe_load(body)
    [job] = workflow["jobs"].values()
    steps: list[dict[str, object]] = job["steps"]
    return steps


def test_github_actions_recipe_installs_what_exists_and_builds_what_it_verifies() -> None:
    """The workflow installs from a checkout or wheel (no PyPI name), and builds and signs before verifying."""
    steps = _github_steps()
    runs = [str(s.get("run", "")) for s in steps]
    installs = [r for r in runs if "pip install" in r and "--target" not in r]
    assert installs and all(re.search(r"pip install (\./\S+|\S+\.whl)\s*$", r.strip()) for r in installs), installs
    order = [i for i, r in enumerate(runs) if "--target dist/myservice" in r or "build dist/myservice" in r]
    verify = [i for i, r in enumerate(runs) if "verify dist/myservice" in r]
    assert len(order) == 2 and verify and max(order) < min(verify)


def test_github_actions_sign_and_verify_steps_run(tmp_path: Path) -> None:
    """The recipe's sign and verify steps, run as GitHub runs them, pass on the tree and fail on a change."""
    import os
    import shutil
    import subprocess

    from duri_integrity.keys import generate_keypair

    from .conftest import console_script

    exe = console_script()
    assert exe is not None
    work, runner_temp = tmp_path / "work", tmp_path / "runner"
    (work / "dist" / "myservice" / "app").mkdir(parents=True)
    runner_temp.mkdir()
    (work / "dist" / "myservice" / "app" / "main.py").write_text("print('hi')\n")
    generate_keypair(str(tmp_path / "ci.key"), str(tmp_path / "ci.pub"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")},
        "PATH": os.path.dirname(exe) + os.pathsep + os.environ["PATH"],
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "RELEASE_SECRET_KEY": (tmp_path / "ci.key").read_text().strip(),
        "RELEASE_PUBLIC_KEY": (tmp_path / "ci.pub").read_text().splitlines()[1],
    }
    steps = [s for s in _github_steps() if "duri-integrity " in str(s.get("run", ""))]

    def run(step: dict[str, object]) -> int:
        assert step.get("shell") == "bash"
        # ${{ vars.X }} and ${{ secrets.X }} in the step's env come from the repository's settings.
        expr = re.compile(r"\$\{\{ (?:vars|secrets)\.(\w+) \}\}")
        given = step.get("env") or {}
        assert isinstance(given, dict), f"a step's env is a mapping: {given!r}"
        step_env = {k: expr.sub(lambda m: env[m.group(1)], str(v)) for k, v in given.items()}
        cmd = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", str(step["run"])]
        return subprocess.run(cmd, cwd=work, env={**env, **step_env}, capture_output=True, check=False).returncode

    sign, verify = steps
    assert run(sign) == 0 and run(verify) == 0
    assert list(runner_temp.iterdir()) == []  # the secret key did not outlive the step
    (work / "dist" / "myservice" / "app" / "main.py").write_text("print('changed')\n")
    assert run(verify) == 1
    shutil.rmtree(work / "dist")
    assert run(verify) != 0


def test_ci_run_makes_and_uses_a_virtual_environment(tmp_path: Path) -> None:
    """.ci/run creates a venv and runs the README command inside it (checked with the command swapped out)."""
    import shutil
    import subprocess

    from .conftest import require_tool

    require_tool("minisign", "minisign")
    require_tool("jq", "jq")
    lines = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()
    # From the compiler check on, the steps need the project itself; this test is about the venv.
    start = next(i for i, line in enumerate(lines) if line.startswith("# The optional C extension"))
    lines = [*lines[:start], "true"]
    (tmp_path / ".ci").mkdir()
    probe = "python3 -c 'import sys; print(sys.prefix)'"
    (tmp_path / ".ci" / "run").write_text("\n".join([*lines[:-1], probe]) + "\n")
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == str(tmp_path / ".venv")
    assert shutil.which("pip", path=str(tmp_path / ".venv" / "bin"))


def test_plain_shell_ci_step_fails_closed(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """howto-ci's plain shell step exits 0 on a verified tree, 1 on a changed one, non-zero without the tool."""
    import os
    import subprocess

    from .conftest import build_and_sign, console_script, require_tool

    signed = build_and_sign(tree, keys, deployment="myservice")

    jq = require_tool("jq", "jq")
    [step] = [b for lang, b in _fenced_blocks(ROOT / "docs" / "howto-ci.md") if lang == "sh" and "jq" in b]
    exe = console_script()
    assert exe is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "jq").symlink_to(jq)
    base = {
        "RELEASE_PUBLIC_KEY": str(signed.keys.public),
        "DURI_INTEGRITY_STATE_DIR": "none",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    work = tmp_path / "ci"
    (work / "dist").mkdir(parents=True)
    service = signed.root.rename(work / "dist" / "myservice")

    def run(path: str) -> int:
        r = subprocess.run(
            ["/bin/sh", "-c", step], cwd=work, env={**base, "PATH": path}, capture_output=True, check=False
        )
        return r.returncode

    with_tool = f"{bindir}{os.pathsep}{os.path.dirname(exe)}{os.pathsep}/usr/bin:/bin"
    assert run(with_tool) == 0
    assert run(f"{bindir}") != 0
    (service / "app" / "main.py").write_text("changed\n")
    assert run(with_tool) == 1
