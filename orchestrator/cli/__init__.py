"""The ``orchestrator`` command: a thin shell that parses options and calls the parts.

``commands.py`` holds the parser and the commands; beside it are what only the command
line needs: option types, shell completion, the confirmation prompt, the spellings
of ``--resume``, and ``run --save`` / ``apply`` for reviewed plans.
"""

from orchestrator.cli.commands import entry, main

__all__ = ["entry", "main"]
