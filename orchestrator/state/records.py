"""What the journal gives back: runs, their totals and their clears, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Every state a clear row can be in, in the order totals are reported.
STATES: tuple[str, ...] = ("succeeded", "failed", "skipped", "pending", "in_flight")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One journaled run. ``finished_at`` and ``exit_code`` are ``None`` until it ends.

    ``base_url`` (the API's URL template it was sent to) and ``simulated`` are ``None``
    for a run recorded by an orchestrator that did not record them.
    """

    run_id: str
    plan: str
    digest: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    dry_run: bool
    base_url: str | None = None
    simulated: bool | None = None


@dataclass(frozen=True, slots=True)
class RunSummary(RunRecord):
    """A run and how many of its clears are in each state (every state present, maybe 0)."""

    totals: dict[str, int] = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class ClearRecord:
    """One clear of a run: what it targets, where it got to and the last answer.

    ``token_id`` names the token of the clear's latest attempt (or of its lane when
    the run began, before any attempt).
    """

    seq: int
    token_id: str
    server: str
    type_campaign: str
    campaign_id: str
    result: str
    state: str
    attempts: int
    http_status: int | None
    code: int | None
    msg: str | None
    error: str | None
    reason: str | None
