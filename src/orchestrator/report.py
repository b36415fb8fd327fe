"""The run report: one JSON document per run, written atomically.

It is written after every run that started, also after failures and
interrupts, so a caller always finds a complete file or none at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .atomic import write_text_atomically
from .errors import OrchestratorError
from .events import (
    ClearFinished,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    clear_fields,
    outcome_fields,
)


@dataclass(slots=True)
class ReportCollector:
    """A scheduler listener that keeps the terminal event of every clear.

    It also counts calls per token, retries included: every call spends the
    token's daily quota.
    """

    finished: dict[int, ClearFinished] = field(default_factory=dict)
    calls_per_token: dict[str, int] = field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        """Keep ``event`` when it ends a clear; count it when it starts a call."""
        if isinstance(event, ClearFinished):
            self.finished[event.clear.seq] = event
        elif isinstance(event, ClearStarted):
            self.calls_per_token[event.token_id] = self.calls_per_token.get(event.token_id, 0) + 1

    def all_succeeded(self) -> bool:
        """True when every clear succeeded, in this run or in the run it resumed."""
        return all(
            event.outcome is Outcome.SUCCEEDED or event.reason is Reason.ALREADY_SUCCEEDED
            for event in self.finished.values()
        )

    def totals(self) -> dict[str, int]:
        """How many clears ended each way."""
        counts = {outcome.value: 0 for outcome in Outcome}
        for event in self.finished.values():
            counts[event.outcome.value] += 1
        return counts

    def clears(self) -> list[dict[str, object]]:
        """One flat record per clear, in plan order."""
        return [
            clear_fields(event.clear, event.token_id) | outcome_fields(event)
            for _, event in sorted(self.finished.items())
        ]


def write_json_atomically(path: str | os.PathLike[str], document: object) -> None:
    """Write ``document`` as JSON to ``path`` so readers see the old file or the new one."""
    try:
        write_text_atomically(path, json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise ReportError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc


class ReportError(OrchestratorError):
    """The report could not be written."""
