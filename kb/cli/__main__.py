"""``python -m kb.cli``: the same as ``kb``."""

from kb.cli import main

main()
