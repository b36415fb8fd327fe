"""A run's metrics for node_exporter's textfile collector (Prometheus text format 0.0.4).

Written once, atomically, at the end of a run (interrupted runs included), so the
collector always reads a whole file: the previous run's or this one's. The text
comes from ``prometheus_client``; the file is written by
:func:`~orchestrator.output.atomic.write_text_atomically` rather than by its
``write_to_textfile``, which creates the file with the process's umask (a cron
job's ``umask 077`` would hide it from a node_exporter running as another user)
and does not sync it to disk before the rename.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from orchestrator.errors import MetricsError
from orchestrator.output.atomic import FILE_MODE, write_text_atomically
from orchestrator.run.events import TALLIES

__all__ = ["MetricsError", "render_metrics", "write_metrics"]


def render_metrics(
    *,
    plan: str,
    run_id: str,
    started_at: float,
    finished_at: float,
    exit_code: int,
    totals: Mapping[str, int],
    calls_per_token: Mapping[str, int],
    duration_s: float,
) -> str:
    """The run as Prometheus text exposition: one gauge family per fact, labelled ``plan``.

    ``started_at`` and ``finished_at`` are unix seconds; ``totals`` counts clears by
    outcome; ``calls_per_token`` counts calls (retries included) by ``token_id``.
    """
    registry = CollectorRegistry(auto_describe=False)

    def gauge(name: str, help_text: str, *labels: str) -> Gauge:
        return Gauge(name, help_text, ("plan", *labels), registry=registry)

    exit_help = (
        "Exit code of the run: 0 all succeeded (now or already), 1 some failed or skipped, "
        "2 nothing sent, 128+N signal N."
    )
    for name, help_text, value in (
        ("orchestrator_run_started_timestamp_seconds", "Unix time the run started.", started_at),
        ("orchestrator_run_finished_timestamp_seconds", "Unix time the run finished.", finished_at),
        ("orchestrator_run_exit_code", exit_help, exit_code),
        ("orchestrator_run_duration_seconds", "How long the run took.", duration_s),
    ):
        gauge(name, help_text).labels(plan).set(value)
    clears = gauge("orchestrator_clears", "Clears of the run by how they ended.", "outcome")
    # Every tally is written, zero or not (already_succeeded: done before a resume).
    for outcome in [*TALLIES, *sorted(set(totals) - set(TALLIES))]:
        clears.labels(plan, outcome).set(totals.get(outcome, 0))
    calls = gauge(
        "orchestrator_token_calls",
        "clear_campaign calls sent with each token (retries included).",
        "token_id",
    )
    for token_id, count in sorted(calls_per_token.items()):
        calls.labels(plan, token_id).set(count)
    gauge(
        "orchestrator_run_info", "The run's id, as a label; the value is always 1.", "run_id"
    ).labels(plan, run_id).set(1)
    return generate_latest(registry).decode("utf-8")


def write_metrics(path: str | os.PathLike[str], **facts: Any) -> None:
    """Write ``render_metrics(**facts)`` to ``path`` atomically, mode 0644.

    Raises :class:`MetricsError` when the file cannot be written.
    """
    text = render_metrics(**facts)
    try:
        write_text_atomically(path, text, mode=FILE_MODE)
    except OSError as exc:
        raise MetricsError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
