"""``python -m orchestrator``."""

from .cli import entry

entry()
