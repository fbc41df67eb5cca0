"""``python -m duri_integrity``: the same as the ``duri-integrity`` command."""

from .cli import main

if __name__ == "__main__":
    main()
