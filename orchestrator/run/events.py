"""What the scheduler reports while it runs: one value per thing that happened.

The scheduler emits these to listeners (the log, the report, the journal); the
listeners never call back into the scheduler, so data flows one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from orchestrator.plan.model import Clear
from orchestrator.wolkvox.client import Answer


class Outcome(StrEnum):
    """How a clear ended. Each clear ends exactly once."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class Reason(StrEnum):
    """Why a clear failed or was skipped."""

    #: The answer was final and not a success (4xx, unreadable 2xx, ...).
    REJECTED = "rejected"
    #: Every allowed attempt got a retryable answer.
    RETRIES_EXHAUSTED = "retries_exhausted"
    TOKEN_REJECTED = "token_rejected"
    TOKEN_QUOTA_EXHAUSTED = "token_quota_exhausted"
    #: An earlier clear of the lane failed and its ``on_failure`` is ``stop``.
    BLOCKED_BY_FAILURE = "blocked_by_failure"
    #: A clear with ``on_failure: abort`` failed somewhere in the run.
    ABORTED = "aborted"
    #: SIGINT or SIGTERM arrived.
    INTERRUPTED = "interrupted"
    #: ``--dry-run``: nothing is sent.
    DRY_RUN = "dry_run"
    #: ``--resume``: the clear succeeded in the run being resumed.
    ALREADY_SUCCEEDED = "already_succeeded"
    #: The shared token lock was lost while a call held it; the lane stops.
    LOCK_LOST = "lock_lost"
    #: The run could not record an event (the journal cannot be written, say) and halted.
    RECORDING_FAILED = "recording_failed"
    #: wolkvox still answered "under maintenance" after ``maintenance_wait_s`` of waiting.
    MAINTENANCE = "maintenance"


class RestReason(StrEnum):
    """Why a token is kept unused for a while."""

    #: A call got no answer (timeout, dropped connection): wolkvox may still be working on it.
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: ``--resume``: the token's call was in flight when the earlier attempt of the run ended.
    IN_FLIGHT_AT_RESUME = "in_flight_at_resume"
    #: wolkvox answered that it is under maintenance: nothing was done, try again later.
    MAINTENANCE = "maintenance"
    #: The token's lock came with a busy mark: a call made under an earlier hold (another
    #: process's, one killed or cut mid-call) may still run at wolkvox.
    BUSY_ELSEWHERE = "busy_elsewhere"


@dataclass(frozen=True, slots=True)
class TokenWaiting:
    """Another process held the token's lock; ``clear`` waited ``waited_s`` for it."""

    clear: Clear
    token_id: str
    waited_s: float


@dataclass(frozen=True, slots=True)
class TokenLeftPool:
    """Token ``token_id`` left pool ``pool_id`` for ``reason`` while it served ``clear``.

    The campaign of ``clear`` carries on with another token of the pool; ``tokens_left``
    say how many are still in it (none: the rest of the pool is skipped with ``reason``).
    """

    clear: Clear
    token_id: str
    pool_id: str
    reason: Reason
    tokens_left: int


@dataclass(frozen=True, slots=True)
class TokenResting:
    """The token starts resting for ``rest_s`` seconds, until ``until`` (UTC), before ``clear``.

    ``answer`` is the answer that made it rest; ``None`` for a resumed run's rest.
    """

    clear: Clear
    token_id: str
    reason: RestReason
    rest_s: float
    until: datetime
    answer: Answer | None = None


@dataclass(frozen=True, slots=True)
class ClearStarted:
    """An attempt of ``clear`` is about to be sent."""

    clear: Clear
    token_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ClearRetrying:
    """Attempt ``attempt`` got a retryable answer; the next one follows ``delay_s`` later.

    ``delay_s`` counts from this event. When the answer left the outcome unknown, the
    token's rest came first, announced by its own :class:`TokenResting`, and this
    event follows that rest: ``delay_s`` is the backoff alone.
    """

    clear: Clear
    token_id: str
    attempt: int
    delay_s: float
    answer: Answer


@dataclass(frozen=True, slots=True)
class ClearFinished:
    """The one terminal event of a clear.

    ``answer`` is the last answer received (``None`` when nothing was sent or the
    call was cut); ``blocked_by`` names the failed clear that stopped its lane;
    ``unrecorded`` says why the journal could not record this outcome, when it could not.
    ``duration_ms`` runs from the clear's first attempt to its end, waits between
    attempts and rests included; ``rested_ms`` is the part of it the token spent
    resting (:class:`TokenResting`).
    """

    clear: Clear
    token_id: str
    outcome: Outcome
    reason: Reason | None
    attempts: int
    answer: Answer | None
    duration_ms: int
    error: str | None = None
    blocked_by: int | None = None
    unrecorded: str | None = None
    rested_ms: int = 0


Event = TokenWaiting | TokenResting | TokenLeftPool | ClearStarted | ClearRetrying | ClearFinished

#: How the ends of clears are counted, in the order every ending shows them.
TALLIES = ("succeeded", "already_succeeded", "failed", "skipped")


def tally_of(event: ClearFinished) -> str:
    """How ``event`` counts: its outcome, or ``already_succeeded``.

    A resumed run does not send a clear an earlier attempt of the run did: it
    ends as skipped (the log says ``clear.skipped``), yet it is done, so it is
    counted under a name of its own rather than with the skips, which mean exit 1.
    """
    if event.reason is Reason.ALREADY_SUCCEEDED:
        return "already_succeeded"
    return event.outcome.value


#: Receives every event, synchronously, in the order things happened.
Listener = Callable[[Event], None]


class Recorder(Protocol):
    """A listener that makes what it hears durable (the journal); it hears each event first.

    It may batch its writes: :meth:`settle` returns once everything heard so far
    is durable, and raises when it cannot be made so. The scheduler awaits it
    between a clear's :class:`ClearStarted` and its request.
    """

    def __call__(self, event: Event) -> None:
        """Take ``event`` in; raise when it cannot be recorded."""

    async def settle(self) -> None:
        """Return once every event taken in is durable."""


def clear_fields(clear: Clear, token_id: str) -> dict[str, object]:
    """The fields that name a clear in every log line, report entry and journal row."""
    return {
        "seq": clear.seq,
        "token_id": token_id,
        "server": clear.server,
        "type_campaign": clear.type_campaign,
        "campaign_id": clear.campaign_id,
        "result": clear.result_label,
    }


def answer_values(
    event: ClearFinished,
) -> tuple[int | None, int | None, str | None, str | None]:
    """``http_status``, ``code``, ``msg`` and ``error`` of how a clear ended.

    The error is the scheduler's own (a cut call, a lost lock) or else the answer's.
    The one rule for the log, the report and the journal.
    """
    answer = event.answer
    if answer is None:
        return None, None, None, event.error
    return answer.http_status, answer.code, answer.msg, event.error or answer.error


def outcome_fields(event: ClearFinished) -> dict[str, object]:
    """How a clear ended, as flat fields (shared by the log and the report)."""
    http_status, code, msg, error = answer_values(event)
    fields: dict[str, object] = {
        "outcome": tally_of(event),
        "reason": event.reason.value if event.reason else None,
        "attempts": event.attempts,
        "http_status": http_status,
        "code": code,
        "msg": msg,
        "error": error,
        "duration_ms": event.duration_ms,
    }
    if event.rested_ms:
        fields["rested_ms"] = event.rested_ms
    if event.blocked_by is not None:
        fields["blocked_by"] = event.blocked_by
    if event.unrecorded is not None:
        fields["unrecorded"] = event.unrecorded
    return fields
