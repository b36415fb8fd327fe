"""Test doubles shared by the scheduler and runner tests."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from orchestrator.output.log import EventLog, LogFormat, make_logger
from orchestrator.plan.model import Clear, Lane, OnFailure, Secret, TokenRef
from orchestrator.wolkvox.client import Answer, Verdict

OK = Answer(Verdict.SUCCEEDED, http_status=200, code=202, msg="All records has been deleted")
BUSY = Answer(
    Verdict.RETRY,
    http_status=403,
    code=403,
    error="EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN",
)
UNAVAILABLE = Answer(Verdict.RETRY, http_status=503, code=503, error="unreadable body: HTTP 503")
TIMEOUT = Answer(Verdict.RETRY, error="timeout", outcome_unknown=True)
BAD_REQUEST = Answer(
    Verdict.FAILED, http_status=400, code=400, error="SOME PARAMETERS ARE REQUIRED"
)
REJECTED = Answer(Verdict.TOKEN_REJECTED, http_status=403, code=403, error="PLEASE VALIDATE TOKEN")
QUOTA = Answer(Verdict.QUOTA_EXHAUSTED, http_status=403, code=403, error="TOKEN LIMIT EXCEEDED")
MAINTENANCE = Answer(
    Verdict.MAINTENANCE,
    http_status=403,
    code=403,
    error="FORBIDDEN",
    msg="SERVICE UNDER MAINTENANCE",
)


def make_clear(seq: int, campaign: str = "", **overrides: object) -> Clear:
    fields: dict[str, object] = {
        "seq": seq,
        "server": "0014",
        "type_campaign": "predictive",
        "campaign_id": campaign or str(3000 + seq),
        "result": "busy",
        "token": TokenRef("env", "WOLKVOX_TOKEN"),
    }
    fields.update(overrides)
    return Clear(**fields)  # type: ignore[arg-type]


def make_lane(name: str, *clears: Clear) -> Lane:
    secret = Secret(f"token-{name}")
    return Lane(secret.token_id, (f"env:{name}",), secret, clears)


def lane_of(
    name: str, seqs: list[int], on_failure: OnFailure = OnFailure.STOP, retries: int = 3
) -> Lane:
    return make_lane(name, *(make_clear(s, on_failure=on_failure, retries=retries) for s in seqs))


@dataclass
class FakeClock:
    """Time that moves only when someone sleeps; sleeps are recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedSender:
    """Answers each clear from a script (seq -> answers, last one repeats), OK by default.

    ``gates`` hold a call open until the test sets the event; ``started`` tells the test
    that a call of that seq is in flight. Concurrency per token is tracked.
    """

    def __init__(self, script: dict[int, list[Answer]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[int] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.started: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.total_in_flight = 0
        self.max_total_in_flight = 0
        self.on_call: Callable[[int], None] | None = None

    def gate(self, *seqs: int) -> None:
        for seq in seqs:
            self.gates[seq] = asyncio.Event()

    async def __call__(self, clear: Clear, token: Secret) -> Answer:
        self.calls.append(clear.seq)
        tid = token.token_id
        self.in_flight[tid] += 1
        self.total_in_flight += 1
        self.max_in_flight[tid] = max(self.max_in_flight[tid], self.in_flight[tid])
        self.max_total_in_flight = max(self.max_total_in_flight, self.total_in_flight)
        try:
            self.started[clear.seq].set()
            if self.on_call:
                self.on_call(clear.seq)
            if clear.seq in self.gates:
                await self.gates[clear.seq].wait()
            await asyncio.sleep(0)
            answers = self.script.get(clear.seq, [OK])
            attempt = self.calls.count(clear.seq)
            return answers[min(attempt, len(answers)) - 1]
        finally:
            self.in_flight[tid] -= 1
            self.total_in_flight -= 1


def make_log(fmt: LogFormat, run_id: str | None, stream: TextIO) -> tuple[Any, EventLog]:
    """A logger on ``stream`` and the listener that logs clear events through it, as a run has."""
    logger = make_logger(fmt, run_id, stream)
    return logger, EventLog(logger)
