"""``python -m llmrca ...`` is the ``llmrca`` command, for environments where the script is not on PATH."""

from llmrca.cli import main

main()
