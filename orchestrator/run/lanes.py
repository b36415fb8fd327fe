"""What a run keeps per token, lane, pool and clear while the scheduler works.

The scheduler (:mod:`orchestrator.run.scheduler`) owns the work; these are the
records it works on, kept apart so that each reads on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from orchestrator.errors import OrchestratorError
from orchestrator.plan.model import Clear, Lane, Secret
from orchestrator.run.backoff import MaintenanceWindow
from orchestrator.run.events import ClearFinished, Outcome, Reason
from orchestrator.wolkvox.client import Answer, Verdict

LANE_ENDING = {
    Verdict.TOKEN_REJECTED: Reason.TOKEN_REJECTED,
    Verdict.QUOTA_EXHAUSTED: Reason.TOKEN_QUOTA_EXHAUSTED,
}

#: The answer of a call that outlived its ``timeout_s``: it may have reached wolkvox.
TIMED_OUT = Answer(Verdict.RETRY, error="timeout", outcome_unknown=True)


@dataclass(slots=True)
class Token:
    """One token as the run uses it, shared by every lane and pool that holds it."""

    token_id: str
    secret: Secret | None
    #: A resumed run: the token's call was in flight when the run stopped; rest before use.
    cooling: bool = False
    #: Keeps this process's calls on the token one at a time, whichever lane makes them.
    guard: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass(slots=True)
class Attempts:
    count: int = 0
    #: Attempts answered "under maintenance": they do not count against ``retries``.
    maintenance: int = 0
    #: Attempts refused because their token left the pool: no retry of the clear's own.
    handed_over: int = 0
    answer: Answer | None = None
    started: float = 0.0
    rested_s: float = 0.0
    error: str | None = None
    reason: Reason | None = field(default=None)

    @property
    def retried(self) -> int:
        """The attempts that count against the clear's ``retries``."""
        return self.count - self.maintenance - self.handed_over

    def ended(self, clear: Clear, token_id: str, outcome: Outcome, now: float) -> ClearFinished:
        """The terminal event of ``clear`` after these attempts, at monotonic time ``now``."""
        return ClearFinished(
            clear=clear,
            token_id=token_id,
            outcome=outcome,
            reason=self.reason,
            attempts=self.count,
            answer=self.answer,
            duration_ms=round((now - self.started) * 1000),
            error=self.error,
            rested_ms=round(self.rested_s * 1000),
        )


@dataclass(slots=True)
class LaneState:
    """A lane's clears, or one campaign's clears in a pool, and how far they got."""

    token: Token
    clears: tuple[Clear, ...]
    maintenance: MaintenanceWindow
    #: The pool this campaign belongs to; ``None`` for a lane of one token.
    pool: Pool | None = None
    #: Index in ``clears`` of the next clear to run.
    next: int = 0
    blocked: Reason | None = None
    blocked_by: int | None = None
    #: In a pool: why the token serving this campaign left the pool, handing it on.
    left: Reason | None = None
    #: In a pool: the attempts of the clear under way when its token left.
    tries: Attempts | None = None

    def skipped(self, clear: Clear, reason: Reason) -> ClearFinished:
        """The terminal event of ``clear``, not sent for ``reason``."""
        blocked_by = self.blocked_by if reason is Reason.BLOCKED_BY_FAILURE else None
        return ClearFinished(
            clear=clear,
            token_id=self.token.token_id,
            outcome=Outcome.SKIPPED,
            reason=reason,
            attempts=0,
            answer=None,
            duration_ms=0,
            blocked_by=blocked_by,
        )


class Pool:
    """The campaigns of a pool not yet started, and who is working on the others."""

    def __init__(
        self, lane: Lane, tokens: list[Token], window: Callable[[], MaintenanceWindow]
    ) -> None:
        self.pool_id = lane.token_id
        self.tokens = tokens
        placeholder = Token(lane.token_id, None)  # names a campaign until a token takes it
        self.queue = deque(
            LaneState(placeholder, chain, window(), pool=self) for chain in lane.campaigns()
        )
        self.running = 0
        self._changed = anyio.Event()

    def changed(self) -> None:
        """Wake the tokens waiting for a campaign."""
        self._changed.set()
        self._changed = anyio.Event()

    def next_change(self) -> anyio.Event:
        """Set at the next change: a campaign handed back, or one finished."""
        return self._changed


def reason_of(exc: BaseException) -> str:
    """``exc`` in one line: our own errors by their message, others by their type too."""
    return str(exc) if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"


def failure_reason(answer: Answer) -> Reason:
    if answer.verdict is Verdict.RETRY:
        return Reason.RETRIES_EXHAUSTED
    return LANE_ENDING.get(answer.verdict, Reason.REJECTED)
