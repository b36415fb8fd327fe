"""The options every command that sends shares (``run``, ``clear``, ``apply``): one wording."""

from __future__ import annotations

import argparse


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="journal and lock directory (default: $ORCHESTRATOR_STATE_DIR, "
        "$XDG_STATE_HOME/orchestrator or ~/.local/state/orchestrator)",
    )


def add_sending_options(parser: argparse.ArgumentParser) -> None:
    """``--yes``, the run's outputs (report, log format, metrics), its locks and quota check."""
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--report", metavar="PATH", help="write a JSON report of the run to PATH")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="JSON lines, or a readable rendering (auto: console on a terminal)",
    )
    parser.add_argument(
        "--lock-url", metavar="URL", help="redis:// URL of shared token locks (many hosts)"
    )
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus metrics of the run to PATH (for node_exporter's textfile collector)",
    )
    parser.add_argument(
        "--check-quota",
        action="store_true",
        help="before clearing, refuse to start when a token lacks the calls its lane may need",
    )
