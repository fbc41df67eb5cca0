"""Hatchling build hook: compile the optional C extension ``duri_integrity._speedups``.

It is compiled with the machine's C compiler (``$CC``, else the one Python was built
with) and Python headers. When that is not possible (no compiler, no headers, a compile
error, or ``DURI_INTEGRITY_NO_EXTENSION=1``) the build goes on without it, as a pure
Python wheel: the package then runs its pure-Python path, with the same results.

Also runnable directly to build the extension in place for development:
``python3 hatch_build.py`` (prints where it wrote it, or why it did not).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "duri_integrity" / name for name in ("_speedups.c", "_warming.c")]
FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-fPIC", "-shared", "-fvisibility=hidden"]


def ext_name() -> str:
    return "_speedups" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def compile_extension(out_dir: Path, extra_flags: tuple[str, ...] = ()) -> tuple[Path | None, str]:
    """Compile into ``out_dir``; return (the module's path, "") or (None, why not)."""
    if os.environ.get("DURI_INTEGRITY_NO_EXTENSION", "") not in ("", "0"):
        return None, "DURI_INTEGRITY_NO_EXTENSION is set"
    include = sysconfig.get_paths().get("include", "")
    if not include or not (Path(include) / "Python.h").is_file():
        return None, f"no Python headers (Python.h) in {include!r}"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or not shutil.which(cc[0]):
        return None, f"no C compiler ({' '.join(cc) or 'none configured'})"
    target = out_dir / ext_name()
    cmd = [*cc, *FLAGS, *extra_flags, f"-I{include}", *map(str, SOURCES), "-o", str(target)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{' '.join(cmd)}: {exc}"
    if proc.returncode != 0 or not target.is_file():
        return None, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    return target, ""


# mypy sees hatchling only where it is installed (a build environment; the test environment has
# none): there the fallback re-binds a class and the base is generic, elsewhere the base is Any.
# Each ignore names both cases; `unused-ignore` keeps the one that does not apply quiet.
try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, outside a build
    BuildHookInterface = object  # type: ignore[assignment,misc,unused-ignore]


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[misc,type-arg,unused-ignore]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if version == "editable":  # the editable wheel imports from the source tree: build it there
            built, why = compile_extension(HERE / "duri_integrity")
        else:
            self._tmp = tempfile.mkdtemp(prefix="duri-integrity-ext-")
            built, why = compile_extension(Path(self._tmp))
            if built is not None:
                build_data["force_include"][str(built)] = f"duri_integrity/{built.name}"
        if built is None:
            print(f"duri-integrity: C extension not built ({why}); using the pure-Python path", file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    built, why = compile_extension(HERE / "duri_integrity", tuple(sys.argv[1:]))
    print(built if built else f"not built: {why}")
    sys.exit(0 if built else 1)
