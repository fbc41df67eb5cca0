"""``python3 -P -m duri_integrity``: the same command as the ``duri-integrity`` script."""

from ._console import run

if __name__ == "__main__":
    run()
