"""``python -m orchestrator``."""

from orchestrator.cli import entry

entry()
