"""A run's metrics for node_exporter's textfile collector (Prometheus text format 0.0.4).

Written once, atomically, at the end of a run (interrupted runs included), so the
collector always reads a whole file: the previous run's or this one's. The format
is written by hand: a run must not depend on ``prometheus_client``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import MetricsError
from orchestrator.output.atomic import FILE_MODE, write_text_atomically

#: How clears end, in the order they are written; every one is written, zero or not.
OUTCOMES = ("succeeded", "failed", "skipped")

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


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
    run: Labels = {"plan": plan}
    outcomes = [*OUTCOMES, *sorted(set(totals) - set(OUTCOMES))]
    return "".join(
        (
            _family(
                "orchestrator_run_started_timestamp_seconds",
                "Unix time the run started.",
                [(run, started_at)],
            ),
            _family(
                "orchestrator_run_finished_timestamp_seconds",
                "Unix time the run finished.",
                [(run, finished_at)],
            ),
            _family(
                "orchestrator_run_exit_code",
                "Exit code of the run: 0 all succeeded, 1 some failed or skipped, "
                "2 nothing sent, 128+N signal N.",
                [(run, exit_code)],
            ),
            _family(
                "orchestrator_run_duration_seconds",
                "How long the run took.",
                [(run, duration_s)],
            ),
            _family(
                "orchestrator_clears",
                "Clears of the run by how they ended.",
                [({**run, "outcome": o}, totals.get(o, 0)) for o in outcomes],
            ),
            _family(
                "orchestrator_token_calls",
                "clear_campaign calls sent with each token (retries included).",
                [({**run, "token_id": t}, n) for t, n in sorted(calls_per_token.items())],
            ),
            _family(
                "orchestrator_run_info",
                "The run's id, as a label; the value is always 1.",
                [({**run, "run_id": run_id}, 1)],
            ),
        )
    )


def write_metrics(path: str | os.PathLike[str], **facts: Any) -> None:
    """Write ``render_metrics(**facts)`` to ``path`` atomically, mode 0644.

    Raises :class:`MetricsError` when the file cannot be written.
    """
    text = render_metrics(**facts)
    try:
        write_text_atomically(path, text, mode=FILE_MODE)
    except OSError as exc:
        raise MetricsError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc


def _family(name: str, help_text: str, samples: Iterable[Sample]) -> str:
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} gauge"]
    lines.extend(f"{name}{_labels(labels)} {_value(value)}" for labels, value in samples)
    return "".join(f"{line}\n" for line in lines)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items())
    return f"{{{pairs}}}"


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # repr is the shortest text that reads back as the same float.
    return repr(float(value))
