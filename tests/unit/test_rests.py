"""A token's rests: each one announced (why, how long, until when) before it is taken,
the waits around it reported truthfully, and wolkvox's maintenance waited out, not failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from fakes import MAINTENANCE, OK, TIMEOUT, UNAVAILABLE, FakeClock, ScriptedSender, lane_of

from orchestrator.plan.model import Lane, OnFailure
from orchestrator.run.backoff import MaintenanceWindow, maintenance_delay
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    RestReason,
    TokenResting,
)
from orchestrator.run.scheduler import Scheduler

_T = TypeVar("_T")

#: The wall clock the scheduler reads in these tests: a rest's ``until`` is exact.
NOON = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


async def within(step: Awaitable[_T]) -> _T:
    """``step``, failing the test instead of hanging when it takes more than 10 s."""
    return await asyncio.wait_for(step, 10.0)


class NotingClock(FakeClock):
    """A fake clock that notes, at each sleep, how many events had been heard by then."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events
        self.heard_at_sleep: list[int] = []

    async def sleep(self, seconds: float) -> None:
        self.heard_at_sleep.append(len(self.events))
        await super().sleep(seconds)


def scheduler(
    lanes: list[Lane],
    sender: ScriptedSender,
    events: list[Event],
    clock: FakeClock,
    *,
    cooldown_s: float = 60.0,
    maintenance_wait_s: float = 1800.0,
    cooling: frozenset[str] = frozenset(),
) -> Scheduler:
    return Scheduler(
        lanes,
        sender,
        max_parallel=4,
        cooldown_s=cooldown_s,
        listeners=[events.append],
        clock=clock,
        backoff=lambda attempt, retry_after: 0.5 * attempt,
        cooling_tokens=cooling,
        maintenance_wait_s=maintenance_wait_s,
        # 60, 120, 240, then 300 s: the default's steps without its jitter.
        maintenance_backoff=lambda attempt, _: min(300.0, 60.0 * 2 ** (attempt - 1)),
        # The wall clock moves with the fake one, so ``until`` can be checked exactly.
        wall_clock=lambda: NOON + timedelta(seconds=clock.monotonic() - 1000.0),
    )


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def rests(events: list[Event]) -> list[TokenResting]:
    return [e for e in events if isinstance(e, TokenResting)]


def ended(events: list[Event]) -> ClearFinished:
    [end] = [e for e in events if isinstance(e, ClearFinished)]
    return end


# ------------------------------------------------------- the rest after a timeout


async def test_the_rest_after_a_timeout_is_announced_before_it_is_taken() -> None:
    events: list[Event] = []
    clock = NotingClock(events)
    lane = lane_of("A", [1])
    await within(scheduler([lane], ScriptedSender({1: [TIMEOUT, OK]}), events, clock).run())
    assert kinds(events) == [
        "ClearStarted",
        "TokenResting",
        "ClearRetrying",
        "ClearStarted",
        "ClearFinished",
    ]
    [rest] = rests(events)
    assert (rest.reason, rest.rest_s, rest.answer) == (RestReason.OUTCOME_UNKNOWN, 60.0, TIMEOUT)
    assert (rest.token_id, rest.clear.seq) == (lane.token_id, 1)
    assert rest.until == NOON + timedelta(seconds=60)
    # The rest (60 s) is taken once the event is out; the retry's backoff (0.5 s) after it.
    assert clock.sleeps == [60.0, 0.5]
    assert clock.heard_at_sleep == [2, 3]


async def test_after_a_rest_the_retry_says_the_backoff_it_waits_and_the_clear_its_rest() -> None:
    events: list[Event] = []
    clock = FakeClock()
    lane = lane_of("A", [1])
    await within(scheduler([lane], ScriptedSender({1: [TIMEOUT, OK]}), events, clock).run())
    [retrying] = [e for e in events if isinstance(e, ClearRetrying)]
    started = [e for e in events if isinstance(e, ClearStarted)]
    # delay_s counts from the retrying event, which comes once the rest is over.
    assert retrying.delay_s == 0.5
    end = ended(events)
    assert (end.outcome, end.attempts) == (Outcome.SUCCEEDED, 2)
    # duration_ms covers the whole clear, rest included; rested_ms says how much was rest.
    assert (end.duration_ms, end.rested_ms) == (60_500, 60_000)
    assert len(started) == 2


async def test_a_clear_that_ends_on_a_timeout_still_says_its_rest() -> None:
    events: list[Event] = []
    lane = lane_of("A", [1, 2], on_failure=OnFailure.CONTINUE, retries=0)
    sender = ScriptedSender({1: [TIMEOUT]})
    await within(scheduler([lane], sender, events, FakeClock(), cooldown_s=45).run())
    assert [(r.clear.seq, r.reason, r.rest_s) for r in rests(events)] == [
        (1, RestReason.OUTCOME_UNKNOWN, 45.0)
    ]
    end = {e.clear.seq: e for e in events if isinstance(e, ClearFinished)}
    assert (end[1].reason, end[1].duration_ms, end[1].rested_ms) == (
        Reason.RETRIES_EXHAUSTED,
        45_000,
        45_000,
    )
    assert (end[2].outcome, end[2].rested_ms) == (Outcome.SUCCEEDED, 0)


async def test_no_rest_no_resting_event() -> None:
    events: list[Event] = []
    lane = lane_of("A", [1])
    sender = ScriptedSender({1: [TIMEOUT, OK]})
    await within(scheduler([lane], sender, events, FakeClock(), cooldown_s=0).run())
    assert rests(events) == []


# ---------------------------------------------------------- a resumed run's rest


async def test_a_resumed_run_announces_the_rest_of_a_token_whose_call_was_in_flight() -> None:
    events: list[Event] = []
    clock = NotingClock(events)
    cooling, fresh = lane_of("A", [1, 2]), lane_of("B", [3])
    run = scheduler(
        [cooling, fresh], ScriptedSender(), events, clock, cooling=frozenset({cooling.token_id})
    )
    await within(run.run())
    [rest] = rests(events)
    assert (rest.token_id, rest.clear.seq, rest.reason, rest.rest_s, rest.answer) == (
        cooling.token_id,
        1,
        RestReason.IN_FLIGHT_AT_RESUME,
        60.0,
        None,
    )
    assert rest.until == NOON + timedelta(seconds=60)
    first_call = next(
        i for i, e in enumerate(events) if isinstance(e, ClearStarted) and e.clear.seq == 1
    )
    assert events.index(rest) < first_call
    assert clock.sleeps == [60.0], "only the token that was in flight rests, once"
    # The rest comes before the clear begins: it is not part of the clear's duration.
    assert {e.clear.seq: e.rested_ms for e in events if isinstance(e, ClearFinished)} == {
        1: 0,
        2: 0,
        3: 0,
    }


# -------------------------------------------------------------------- maintenance


async def test_maintenance_is_waited_out_and_does_not_count_against_retries() -> None:
    events: list[Event] = []
    clock = FakeClock()
    lane = lane_of("A", [1], retries=0)
    sender = ScriptedSender({1: [MAINTENANCE, MAINTENANCE, MAINTENANCE, OK]})
    await within(scheduler([lane], sender, events, clock).run())
    assert sender.calls == [1, 1, 1, 1]
    assert clock.sleeps == [60.0, 120.0, 240.0]
    assert [(r.reason, r.rest_s, r.answer) for r in rests(events)] == [
        (RestReason.MAINTENANCE, 60.0, MAINTENANCE),
        (RestReason.MAINTENANCE, 120.0, MAINTENANCE),
        (RestReason.MAINTENANCE, 240.0, MAINTENANCE),
    ]
    assert [r.until for r in rests(events)] == [
        NOON + timedelta(seconds=60),
        NOON + timedelta(seconds=180),
        NOON + timedelta(seconds=420),
    ]
    assert not [e for e in events if isinstance(e, ClearRetrying)], "no retry was spent"
    end = ended(events)
    assert (end.outcome, end.attempts, end.duration_ms, end.rested_ms) == (
        Outcome.SUCCEEDED,
        4,
        420_000,
        420_000,
    )


async def test_maintenance_that_outlasts_the_wait_fails_the_clear_with_reason_maintenance() -> None:
    events: list[Event] = []
    clock = FakeClock()
    lane = lane_of("A", [1, 2])
    sender = ScriptedSender({1: [MAINTENANCE]})
    await within(scheduler([lane], sender, events, clock, maintenance_wait_s=200).run())
    # 60, 120, then the 20 s left of the 200: the last call comes as the wait ends.
    assert clock.sleeps == [60.0, 120.0, 20.0]
    assert sender.calls == [1, 1, 1, 1]
    end = {e.clear.seq: e for e in events if isinstance(e, ClearFinished)}
    assert (end[1].outcome, end[1].reason, end[1].attempts, end[1].answer) == (
        Outcome.FAILED,
        Reason.MAINTENANCE,
        4,
        MAINTENANCE,
    )
    assert (end[2].outcome, end[2].reason) == (Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE)


async def test_no_maintenance_wait_fails_on_the_first_maintenance_answer() -> None:
    events: list[Event] = []
    clock = FakeClock()
    sender = ScriptedSender({1: [MAINTENANCE, OK]})
    lane = lane_of("A", [1])
    await within(scheduler([lane], sender, events, clock, maintenance_wait_s=0).run())
    assert (sender.calls, clock.sleeps, rests(events)) == ([1], [], [])
    assert ended(events).reason is Reason.MAINTENANCE


async def test_the_wait_counts_from_the_first_of_an_unbroken_series_of_maintenance_answers() -> (
    None
):
    events: list[Event] = []
    clock = FakeClock()
    lane = lane_of("A", [1, 2], on_failure=OnFailure.CONTINUE)
    # Clear 1: a 503 between two maintenance answers starts the series again.
    # Clear 2: still in the series clear 1 ended in, whose wait is spent: no new wait.
    sender = ScriptedSender({1: [MAINTENANCE, UNAVAILABLE, MAINTENANCE], 2: [MAINTENANCE]})
    await within(scheduler([lane], sender, events, clock, maintenance_wait_s=100).run())
    assert clock.sleeps == [60.0, 0.5, 60.0, 40.0]
    assert sender.calls == [1, 1, 1, 1, 1, 2]
    end = {e.clear.seq: e for e in events if isinstance(e, ClearFinished)}
    assert [(end[s].reason, end[s].attempts) for s in (1, 2)] == [
        (Reason.MAINTENANCE, 5),
        (Reason.MAINTENANCE, 1),
    ]


class _GatedClock(FakeClock):
    """Sleeps last until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await asyncio.Event().wait()


async def test_an_interrupt_ends_a_maintenance_wait_at_once() -> None:
    # Nothing runs at wolkvox during maintenance: unlike a rest after a timeout, the
    # wait holds nothing that a first interrupt must let finish.
    events: list[Event] = []
    clock = _GatedClock()
    lane = lane_of("A", [1, 2])
    run = scheduler([lane], ScriptedSender({1: [MAINTENANCE]}), events, clock)
    task = asyncio.create_task(run.run())
    await within(clock.sleeping.wait())
    run.interrupt()
    await within(task)
    outcomes = {e.clear.seq: (e.outcome, e.reason) for e in events if isinstance(e, ClearFinished)}
    assert outcomes == {
        1: (Outcome.FAILED, Reason.INTERRUPTED),
        2: (Outcome.SKIPPED, Reason.INTERRUPTED),
    }


def test_maintenance_waits_grow_from_about_a_minute_to_five_minutes() -> None:
    def most(attempt: int) -> float:
        return maintenance_delay(attempt, rand=lambda: 1.0)

    def least(attempt: int) -> float:
        return maintenance_delay(attempt, rand=lambda: 0.0)

    assert [most(n) for n in (1, 2, 3, 4, 9)] == [60.0, 120.0, 240.0, 300.0, 300.0]
    assert [least(n) for n in (1, 2, 3, 4)] == [48.0, 96.0, 192.0, 240.0]
    assert maintenance_delay(1, 90.0, rand=lambda: 0.0) == 90.0, "a longer Retry-After wins"


def test_a_maintenance_window_cuts_its_last_wait_to_the_budget() -> None:
    window = MaintenanceWindow(100.0, lambda attempt, _: 60.0)
    assert [window.next_wait(t, None) for t in (0.0, 60.0, 100.0)] == [60.0, 40.0, None]
    window.close()
    assert window.next_wait(500.0, None) == 60.0, "a new series, a new budget"
