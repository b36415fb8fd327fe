"""The scheduler: order, gating, concurrency, retries, cooldown, failure policy, signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from fakes import (
    BAD_REQUEST,
    BUSY,
    OK,
    QUOTA,
    REJECTED,
    TIMEOUT,
    UNAVAILABLE,
    FakeClock,
    ScriptedSender,
    lane_of,
    make_clear,
    make_lane,
)

from orchestrator.plan.model import Clear, Lane, OnFailure, Secret
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    Recorder,
    TokenWaiting,
)
from orchestrator.run.lanes import TIMED_OUT
from orchestrator.run.scheduler import Scheduler, Sender
from orchestrator.state.locks import Lease, LockError
from orchestrator.wolkvox.client import Answer

_T = TypeVar("_T")


#: Longest any step of a test may take: a regression fails instead of hanging.
BOUND_S = 10.0


async def within(step: Awaitable[_T]) -> _T:
    """``step``, failing the test when it takes longer than :data:`BOUND_S`."""
    return await asyncio.wait_for(step, BOUND_S)


def make_scheduler(
    lanes: list[Lane],
    sender: ScriptedSender,
    events: list[Event],
    *,
    max_parallel: int = 8,
    cooldown_s: float = 60.0,
    clock: FakeClock | None = None,
    also: Callable[[Event], None] | None = None,
) -> Scheduler:
    return Scheduler(
        lanes,
        sender,
        max_parallel=max_parallel,
        cooldown_s=cooldown_s,
        listeners=[events.append, *([also] if also else [])],
        clock=clock or FakeClock(),
        backoff=lambda attempt, retry_after: max(float(attempt), retry_after or 0.0),
    )


def finished(events: list[Event]) -> dict[int, ClearFinished]:
    return {e.clear.seq: e for e in events if isinstance(e, ClearFinished)}


def outcomes(events: list[Event]) -> dict[int, tuple[str, str | None]]:
    return {
        seq: (e.outcome.value, e.reason.value if e.reason else None)
        for seq, e in finished(events).items()
    }


async def test_a_lane_sends_its_clears_in_plan_order() -> None:
    sender, events = ScriptedSender(), []
    await within(make_scheduler([lane_of("A", [1, 2, 3, 4])], sender, events).run())
    assert sender.calls == [1, 2, 3, 4]
    assert outcomes(events) == {s: ("succeeded", None) for s in (1, 2, 3, 4)}


async def test_the_next_clear_waits_until_the_previous_one_succeeded() -> None:
    sender, events = ScriptedSender(), []
    sender.gate(1)
    task = asyncio.create_task(make_scheduler([lane_of("A", [1, 2])], sender, events).run())
    await within(sender.started[1].wait())
    for _ in range(5):
        await asyncio.sleep(0)
    assert sender.calls == [1]
    sender.gates[1].set()
    await within(task)
    assert sender.calls == [1, 2]


async def test_a_token_never_has_two_calls_in_flight() -> None:
    sender, events = ScriptedSender(), []
    lanes = [lane_of("A", list(range(1, 21))), lane_of("B", list(range(21, 41)))]
    await within(make_scheduler(lanes, sender, events).run())
    assert set(sender.max_in_flight.values()) == {1}
    assert sender.max_total_in_flight == 2


async def test_lanes_run_side_by_side_up_to_max_parallel() -> None:
    sender, events = ScriptedSender(), []
    sender.gate(1, 2, 3)
    lanes = [lane_of("A", [1]), lane_of("B", [2]), lane_of("C", [3])]
    task = asyncio.create_task(make_scheduler(lanes, sender, events, max_parallel=2).run())
    await within(sender.started[1].wait())
    await within(sender.started[2].wait())
    for _ in range(5):
        await asyncio.sleep(0)
    assert sender.calls == [1, 2], "the third lane must wait for a free slot"
    sender.gates[2].set()
    await within(sender.started[3].wait())
    sender.gates[1].set()
    sender.gates[3].set()
    await within(task)
    assert sender.max_total_in_flight == 2


async def test_a_retryable_answer_is_retried_until_it_succeeds() -> None:
    sender, events = ScriptedSender({1: [UNAVAILABLE, BUSY, OK]}), []
    await within(make_scheduler([lane_of("A", [1])], sender, events).run())
    assert sender.calls == [1, 1, 1]
    retrying = [e for e in events if isinstance(e, ClearRetrying)]
    assert [(e.attempt, e.delay_s) for e in retrying] == [(1, 1.0), (2, 2.0)]
    assert finished(events)[1].attempts == 3
    assert finished(events)[1].outcome is Outcome.SUCCEEDED


async def test_a_clear_gets_at_most_one_plus_retries_attempts() -> None:
    sender, events = ScriptedSender({1: [UNAVAILABLE]}), []
    await within(make_scheduler([lane_of("A", [1, 2], retries=2)], sender, events).run())
    assert sender.calls == [1, 1, 1]
    assert outcomes(events) == {
        1: ("failed", "retries_exhausted"),
        2: ("skipped", "blocked_by_failure"),
    }
    assert finished(events)[2].blocked_by == 1


async def test_a_final_answer_is_not_retried() -> None:
    sender, events = ScriptedSender({1: [BAD_REQUEST]}), []
    await within(make_scheduler([lane_of("A", [1])], sender, events).run())
    assert sender.calls == [1]
    assert outcomes(events) == {1: ("failed", "rejected")}
    assert finished(events)[1].answer == BAD_REQUEST


async def test_retry_after_is_handed_to_the_backoff() -> None:
    slow_down = UNAVAILABLE.__class__(**{**_fields(UNAVAILABLE), "retry_after_s": 30.0})
    sender, events = ScriptedSender({1: [slow_down, OK]}), []
    await within(make_scheduler([lane_of("A", [1])], sender, events).run())
    assert [e.delay_s for e in events if isinstance(e, ClearRetrying)] == [30.0]


async def test_after_a_timeout_the_token_cools_down_before_the_retry() -> None:
    clock = FakeClock()
    sender, events = ScriptedSender({1: [TIMEOUT, OK]}), []
    await within(
        make_scheduler([lane_of("A", [1])], sender, events, cooldown_s=60, clock=clock).run()
    )
    assert clock.sleeps == [60.0, 1.0], "the cooldown, then the backoff"
    assert [e.delay_s for e in events if isinstance(e, ClearRetrying)] == [1.0]


async def test_after_a_timeout_the_next_clear_waits_for_the_cooldown_too() -> None:
    clock = FakeClock()
    sender, events = ScriptedSender({1: [TIMEOUT]}), []
    lane = lane_of("A", [1, 2], on_failure=OnFailure.CONTINUE, retries=0)
    await within(make_scheduler([lane], sender, events, cooldown_s=45, clock=clock).run())
    assert clock.sleeps == [45.0]
    starts = [e for e in events if isinstance(e, ClearStarted)]
    assert [s.clear.seq for s in starts] == [1, 2]
    assert outcomes(events) == {1: ("failed", "retries_exhausted"), 2: ("succeeded", None)}


async def test_a_rejected_token_skips_the_rest_of_its_lane_whatever_on_failure_says() -> None:
    sender, events = ScriptedSender({1: [REJECTED]}), []
    lanes = [lane_of("A", [1, 2, 3], on_failure=OnFailure.CONTINUE), lane_of("B", [4])]
    await within(make_scheduler(lanes, sender, events).run())
    assert sender.calls == [1, 4]
    assert outcomes(events) == {
        1: ("failed", "token_rejected"),
        2: ("skipped", "token_rejected"),
        3: ("skipped", "token_rejected"),
        4: ("succeeded", None),
    }


async def test_an_exhausted_quota_skips_the_rest_of_its_lane() -> None:
    sender, events = ScriptedSender({1: [QUOTA]}), []
    await make_scheduler(
        [lane_of("A", [1, 2], on_failure=OnFailure.CONTINUE)], sender, events
    ).run()
    assert sender.calls == [1]
    assert outcomes(events) == {
        1: ("failed", "token_quota_exhausted"),
        2: ("skipped", "token_quota_exhausted"),
    }


async def test_on_failure_continue_goes_on_to_the_next_clear() -> None:
    sender, events = ScriptedSender({1: [BAD_REQUEST]}), []
    await make_scheduler(
        [lane_of("A", [1, 2], on_failure=OnFailure.CONTINUE)], sender, events
    ).run()
    assert sender.calls == [1, 2]
    assert outcomes(events) == {1: ("failed", "rejected"), 2: ("succeeded", None)}


async def test_on_failure_abort_starts_nothing_new_but_lets_calls_in_flight_finish() -> None:
    sender, events = ScriptedSender({1: [BAD_REQUEST]}), []
    sender.gate(1, 3)
    lanes = [lane_of("A", [1, 2], on_failure=OnFailure.ABORT), lane_of("B", [3, 4])]
    first_failed = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, ClearFinished) and event.clear.seq == 1:
            first_failed.set()

    scheduler = make_scheduler(lanes, sender, events, also=on_event)
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[3].wait())
    sender.gates[1].set()
    await within(first_failed.wait())
    sender.gates[3].set()
    await within(task)
    assert sorted(sender.calls) == [1, 3]
    assert outcomes(events) == {
        1: ("failed", "rejected"),
        2: ("skipped", "aborted"),
        3: ("succeeded", None),
        4: ("skipped", "aborted"),
    }


async def test_an_interrupt_lets_the_call_in_flight_finish_and_skips_the_rest() -> None:
    sender, events = ScriptedSender(), []
    sender.gate(1)
    scheduler = make_scheduler(
        [lane_of("A", [1, 2]), lane_of("B", [3])], sender, events, max_parallel=1
    )
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[1].wait())
    scheduler.interrupt()
    sender.gates[1].set()
    await within(task)
    assert sender.calls == [1]
    assert outcomes(events) == {
        1: ("succeeded", None),
        2: ("skipped", "interrupted"),
        3: ("skipped", "interrupted"),
    }


async def test_a_second_interrupt_cuts_the_calls_in_flight() -> None:
    sender, events = ScriptedSender(), []
    sender.gate(1)
    scheduler = make_scheduler([lane_of("A", [1, 2])], sender, events)
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[1].wait())
    scheduler.interrupt()
    scheduler.interrupt()
    await within(task)
    cut = finished(events)[1]
    assert (cut.outcome, cut.reason, cut.error, cut.answer) == (
        Outcome.FAILED,
        Reason.INTERRUPTED,
        "interrupted",
        None,
    )
    assert outcomes(events)[2] == ("skipped", "interrupted")


async def test_an_interrupt_during_backoff_fails_the_clear_without_another_attempt() -> None:
    sender, events = ScriptedSender({1: [UNAVAILABLE, OK]}), []

    class StallingClock(FakeClock):
        sleeping = asyncio.Event()

        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            self.sleeping.set()
            await asyncio.Event().wait()

    clock = StallingClock()
    scheduler = make_scheduler([lane_of("A", [1])], sender, events, clock=clock)
    task = asyncio.create_task(scheduler.run())
    await within(clock.sleeping.wait())
    scheduler.interrupt()
    await within(task)
    assert sender.calls == [1]
    assert outcomes(events) == {1: ("failed", "interrupted")}
    assert finished(events)[1].answer == UNAVAILABLE


async def test_every_clear_gets_exactly_one_terminal_event() -> None:
    script = {1: [BAD_REQUEST], 5: [REJECTED], 8: [UNAVAILABLE, OK], 10: [TIMEOUT]}
    sender, events = ScriptedSender(script), []
    lanes = [
        lane_of("A", [1, 2, 3]),
        lane_of("B", [4, 5, 6], on_failure=OnFailure.CONTINUE),
        lane_of("C", [7, 8, 9], retries=1),
        lane_of("D", [10, 11], retries=0),
    ]
    await within(make_scheduler(lanes, sender, events, max_parallel=2).run())
    terminal = [e.clear.seq for e in events if isinstance(e, ClearFinished)]
    assert sorted(terminal) == list(range(1, 12))
    ends = Counter(e.outcome for e in events if isinstance(e, ClearFinished))
    assert ends == {Outcome.SUCCEEDED: 4, Outcome.FAILED: 3, Outcome.SKIPPED: 4}


def _fields(answer: object) -> dict[str, object]:
    return {name: getattr(answer, name) for name in answer.__slots__}  # type: ignore[attr-defined]


async def test_a_resumed_run_does_not_send_clears_that_succeeded_before() -> None:
    sender, events = ScriptedSender(), []
    scheduler = Scheduler(
        [lane_of("A", [1, 2, 3])],
        sender,
        max_parallel=1,
        cooldown_s=60,
        listeners=[events.append],
        clock=FakeClock(),
        already_succeeded=frozenset({1, 3}),
    )
    await within(scheduler.run())
    assert sender.calls == [2]
    assert outcomes(events) == {
        1: ("skipped", "already_succeeded"),
        2: ("succeeded", None),
        3: ("skipped", "already_succeeded"),
    }


async def test_a_token_whose_call_was_cut_by_a_crash_cools_down_before_its_first_use() -> None:
    clock = FakeClock()
    sender, events = ScriptedSender(), []
    lanes = [lane_of("A", [1]), lane_of("B", [2])]
    scheduler = Scheduler(
        lanes,
        sender,
        max_parallel=1,
        cooldown_s=30,
        listeners=[events.append],
        clock=clock,
        cooling_tokens=frozenset({lanes[1].token_id}),
    )
    await within(scheduler.run())
    assert clock.sleeps == [30.0]
    assert sender.calls == [1, 2]


class ScriptedLocks:
    """Token locks whose leases report a wait or get lost, as the test says."""

    def __init__(self, waited_s: float = 0.0, lose_on: int | None = None) -> None:
        self.waited_s, self.lose_on, self.holds = waited_s, lose_on, 0
        self.held: set[str] = set()
        #: (token_id, holds made by then), one per forget().
        self.forgotten: list[tuple[str, int]] = []

    @contextlib.asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        assert token_id not in self.held
        self.holds += 1
        lease = Lease(token_id, self.waited_s)
        self.held.add(token_id)
        try:
            yield lease
        finally:
            self.held.discard(token_id)
            lease.lost = self.holds == self.lose_on

    def forget(self, token_id: str) -> None:
        assert token_id not in self.held
        self.forgotten.append((token_id, self.holds))

    async def aclose(self) -> None:
        return None


async def test_every_call_holds_the_token_lock_and_a_wait_is_reported() -> None:
    sender, events, locks = ScriptedSender(), [], ScriptedLocks(waited_s=2.5)
    seen_held: list[bool] = []
    sender.on_call = lambda seq: seen_held.append(bool(locks.held))
    scheduler = Scheduler(
        [lane_of("A", [1, 2])],
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=locks,
    )
    await within(scheduler.run())
    assert locks.holds == 2
    assert seen_held == [True, True]
    waits = [(e.clear.seq, e.waited_s) for e in events if isinstance(e, TokenWaiting)]
    assert waits == [(1, 2.5), (2, 2.5)]
    kinds = [type(e).__name__ for e in events if e.clear.seq == 1]
    assert kinds == ["TokenWaiting", "ClearStarted", "ClearFinished"]


async def test_a_token_lock_is_forgotten_once_its_lane_has_ended_and_not_before() -> None:
    lanes = [lane_of("A", [1, 2]), lane_of("B", [3]), lane_of("C", [4, 5])]
    sender, locks = ScriptedSender({4: [REJECTED]}), ScriptedLocks()
    scheduler = Scheduler(
        lanes, sender, max_parallel=1, cooldown_s=0, clock=FakeClock(), locks=locks
    )
    await within(scheduler.run())
    # After each lane's last call (C stops at its failed first clear), never mid-lane.
    assert locks.forgotten == [
        (lanes[0].token_id, 2),
        (lanes[1].token_id, 3),
        (lanes[2].token_id, 4),
    ]


async def test_a_lost_lock_stops_the_lane_after_the_call_in_flight() -> None:
    sender, events = ScriptedSender({1: [UNAVAILABLE, OK]}), []
    scheduler = Scheduler(
        [lane_of("A", [1, 2]), lane_of("B", [3])],
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=ScriptedLocks(lose_on=1),
    )
    await within(scheduler.run())
    assert sender.calls == [1, 3]
    assert outcomes(events) == {
        1: ("failed", "lock_lost"),
        2: ("skipped", "lock_lost"),
        3: ("succeeded", None),
    }


class FailingRecorder:
    """A recorder whose write (or, with ``at_settle``, whose commit) of clear 2's start fails."""

    def __init__(self, *, at_settle: bool) -> None:
        self.at_settle = at_settle
        self.pending: list[Event] = []
        self.durable: list[Event] = []

    def __call__(self, event: Event) -> None:
        failing = isinstance(event, ClearStarted) and event.clear.seq == 2
        if failing and not self.at_settle:
            raise OSError("disk full")
        self.pending.append(event)

    async def settle(self) -> None:
        await asyncio.sleep(0)  # a commit at the next turn of the loop, as the journal's
        batch, self.pending = self.pending, []
        if any(isinstance(e, ClearStarted) and e.clear.seq == 2 for e in batch):
            raise OSError("disk full")
        self.durable.extend(batch)


def recorded_scheduler(
    lanes: list[Lane], send: Sender, events: list[Event], recorder: Recorder, *, max_parallel: int
) -> Scheduler:
    return Scheduler(
        lanes,
        send,
        max_parallel=max_parallel,
        cooldown_s=0,
        listeners=[events.append],
        recorder=recorder,
        clock=FakeClock(),
    )


@pytest.mark.parametrize("at_settle", [False, True], ids=["write fails", "commit fails"])
async def test_a_clear_whose_start_cannot_be_recorded_is_not_sent_and_the_run_halts(
    at_settle: bool,
) -> None:
    sender, events = ScriptedSender(), []
    recorder = FailingRecorder(at_settle=at_settle)
    lanes = [lane_of("A", [1, 2, 3]), lane_of("B", [4])]
    scheduler = recorded_scheduler(lanes, sender, events, recorder, max_parallel=1)
    await within(scheduler.run())
    assert sender.calls == [1]
    assert scheduler.calls_sent == 1
    assert isinstance(scheduler.recording_error, OSError)
    # Nobody hears of a start that was not recorded: it is never sent.
    assert [e.clear.seq for e in events if isinstance(e, ClearStarted)] == [1]
    assert [e.clear.seq for e in recorder.durable if isinstance(e, ClearStarted)] == [1]
    assert outcomes(events) == {
        1: ("succeeded", None),
        2: ("skipped", "recording_failed"),
        3: ("skipped", "recording_failed"),
        4: ("skipped", "recording_failed"),
    }


async def test_a_request_leaves_only_once_its_start_is_durable() -> None:
    sender, events = ScriptedSender(), []
    durable_when_sent: list[bool] = []
    recorder = FailingRecorder(at_settle=True)

    async def send(clear: Clear, secret: Secret) -> Answer:
        durable_when_sent.append(
            any(isinstance(e, ClearStarted) and e.clear is clear for e in recorder.durable)
        )
        return await sender(clear, secret)

    lanes = [lane_of("A", [1]), lane_of("B", [3])]
    await within(recorded_scheduler(lanes, send, events, recorder, max_parallel=2).run())
    assert durable_when_sent == [True, True]


class WaitingLocks(ScriptedLocks):
    """Holding the lock takes until the test releases it, as when another process has it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        self.asked.set()
        await within(self.release.wait())
        yield Lease(token_id, 1.0)


async def test_an_interrupt_while_waiting_for_the_token_lock_sends_nothing() -> None:
    sender, events, locks = ScriptedSender(), [], WaitingLocks()
    scheduler = Scheduler(
        [lane_of("A", [1, 2])],
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=locks,
    )
    task = asyncio.create_task(scheduler.run())
    await within(locks.asked.wait())
    scheduler.interrupt()
    locks.release.set()
    await within(task)
    assert sender.calls == []
    assert outcomes(events) == {1: ("skipped", "interrupted"), 2: ("skipped", "interrupted")}


class BrokenLocks(ScriptedLocks):
    @contextlib.asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        raise LockError("lost contact with Redis")
        yield Lease(token_id, 0.0)  # pragma: no cover


async def test_a_lock_service_lost_mid_run_stops_the_lane_without_sending() -> None:
    sender, events = ScriptedSender(), []
    scheduler = Scheduler(
        [lane_of("A", [1, 2])],
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=BrokenLocks(),
    )
    await within(scheduler.run())
    assert sender.calls == []
    assert outcomes(events) == {1: ("skipped", "lock_lost"), 2: ("skipped", "lock_lost")}
    assert finished(events)[1].error == "lost contact with Redis"


class VanishingLocks(ScriptedLocks):
    """Leases that the lock service no longer vouches for by the time the call would go."""

    @contextlib.asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        async def gone(busy_s: float) -> bool:
            return False

        yield Lease(token_id, 0.0, mark_busy=gone)


async def test_a_lease_that_cannot_be_confirmed_right_before_the_call_sends_nothing() -> None:
    sender, events = ScriptedSender(), []
    scheduler = Scheduler(
        [lane_of("A", [1, 2])],
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=VanishingLocks(),
    )
    await scheduler.run()
    assert sender.calls == []
    assert outcomes(events) == {1: ("skipped", "lock_lost"), 2: ("skipped", "lock_lost")}


async def test_the_cooldown_after_a_timeout_is_taken_while_holding_the_token_lock() -> None:
    locks = ScriptedLocks()
    held_while_resting: list[bool] = []

    class WatchingClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            held_while_resting.append(bool(locks.held))
            await super().sleep(seconds)

    sender, events = ScriptedSender({1: [TIMEOUT]}), []
    scheduler = Scheduler(
        [lane_of("A", [1], retries=0)],
        sender,
        max_parallel=1,
        cooldown_s=30,
        listeners=[events.append],
        clock=WatchingClock(),
        locks=locks,
    )
    await within(scheduler.run())
    assert held_while_resting == [True]


class _GatedClock(FakeClock):
    """A clock whose sleeps last until the test opens the gate (or they are cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()
        self.wake = asyncio.Event()
        self.cut: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        try:
            await within(self.wake.wait())
        except asyncio.CancelledError:
            self.cut.append(seconds)
            raise


async def test_an_interrupt_does_not_shorten_the_rest_after_a_timeout() -> None:
    sender, events = ScriptedSender({1: [TIMEOUT]}), []
    clock = _GatedClock()
    lane = lane_of("A", [1, 2], retries=0)
    scheduler = make_scheduler([lane], sender, events, cooldown_s=30, clock=clock)
    task = asyncio.create_task(scheduler.run())
    await within(clock.sleeping.wait())
    assert scheduler.resting == 1
    scheduler.interrupt()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the token's rest outlasts the first interrupt"
    clock.wake.set()
    await within(task)
    assert (clock.sleeps, clock.cut, scheduler.resting) == ([30.0], [], 0)
    assert outcomes(events) == {
        1: ("failed", "retries_exhausted"),
        2: ("skipped", "blocked_by_failure"),
    }


async def test_a_second_interrupt_cuts_the_rest_after_a_timeout() -> None:
    sender, events = ScriptedSender({1: [TIMEOUT]}), []
    clock = _GatedClock()
    scheduler = make_scheduler([lane_of("A", [1, 2])], sender, events, cooldown_s=30, clock=clock)
    task = asyncio.create_task(scheduler.run())
    await within(clock.sleeping.wait())
    scheduler.interrupt()
    scheduler.interrupt()
    await within(task)
    assert (clock.sleeps, clock.cut, sender.calls) == ([30.0], [30.0], [1])
    assert outcomes(events) == {1: ("failed", "interrupted"), 2: ("skipped", "interrupted")}
    assert finished(events)[1].answer == TIMEOUT, "the record keeps the unknown outcome"


async def test_a_call_that_outlives_its_timeout_is_cut_and_its_token_rests() -> None:
    sender, events, clock = ScriptedSender(), [], FakeClock()
    sender.gate(1)  # never opened: the server keeps the call forever
    lane = make_lane("A", make_clear(1, timeout_s=0.01, retries=0), make_clear(2))
    await within(make_scheduler([lane], sender, events, cooldown_s=30, clock=clock).run())
    cut = finished(events)[1]
    assert (cut.outcome, cut.reason, cut.answer) == (
        Outcome.FAILED,
        Reason.RETRIES_EXHAUSTED,
        TIMED_OUT,
    )
    assert cut.answer is not None and cut.answer.outcome_unknown
    assert clock.sleeps == [30.0], "wolkvox may still work on the token: it rests"
    assert outcomes(events)[2] == ("skipped", "blocked_by_failure")


async def test_a_second_interrupt_cuts_every_call_in_flight_and_every_rest_at_once() -> None:
    sender, events = ScriptedSender({2: [TIMEOUT]}), []
    sender.gate(1)
    clock = _GatedClock()
    lanes = [lane_of("A", [1, 3]), lane_of("B", [2, 4])]
    scheduler = make_scheduler(lanes, sender, events, cooldown_s=30, clock=clock)
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[1].wait())
    await within(clock.sleeping.wait())
    assert (scheduler.in_flight, scheduler.resting) == (1, 1)
    scheduler.interrupt()
    assert (scheduler.in_flight, scheduler.resting) == (1, 1), "the first one cuts nothing"
    scheduler.interrupt()
    await within(task)
    assert (clock.cut, sender.calls) == ([30.0], [1, 2])
    assert outcomes(events) == {
        1: ("failed", "interrupted"),
        2: ("failed", "interrupted"),
        3: ("skipped", "interrupted"),
        4: ("skipped", "interrupted"),
    }
    assert finished(events)[1].error == "interrupted"
    assert finished(events)[2].answer == TIMEOUT


class OrderRecorder:
    """A recorder that notes when it takes and settles events; it cannot record clear 1's end."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.ends_taken = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, ClearFinished):
            self.order.append(f"journal {event.clear.seq}")
            if event.clear.seq == 1:
                raise OSError("disk full")
            self.ends_taken = True

    async def settle(self) -> None:
        if self.ends_taken:
            self.order.append("settled")
            self.ends_taken = False


async def test_an_outcome_is_journaled_before_it_is_logged_and_the_log_says_when_it_was_not() -> (
    None
):
    order: list[str] = []
    logged: list[ClearFinished] = []

    def log(event: Event) -> None:
        if isinstance(event, ClearFinished):
            order.append(f"log {event.clear.seq}")
            logged.append(event)

    sender = ScriptedSender()
    lanes = [lane_of("A", [2]), lane_of("B", [1, 3])]
    scheduler = Scheduler(
        lanes,
        sender,
        max_parallel=1,
        cooldown_s=0,
        listeners=[log],
        recorder=OrderRecorder(order),
        clock=FakeClock(),
    )
    await within(scheduler.run())
    assert order[:3] == ["journal 2", "settled", "log 2"]
    assert order[3:5] == ["journal 1", "log 1"], "clear 1's end was offered to the journal first"
    ends = {e.clear.seq: e for e in logged}
    assert ends[2].unrecorded is None
    assert (ends[1].outcome, ends[1].unrecorded) == (Outcome.SUCCEEDED, "OSError: disk full")
    assert (ends[3].outcome, ends[3].reason) == (Outcome.SKIPPED, Reason.RECORDING_FAILED)
    assert isinstance(scheduler.recording_error, OSError)


async def test_a_listener_that_raises_halts_the_run_before_another_request() -> None:
    sender, events = ScriptedSender(), []

    def broken_display(event: Event) -> None:
        if isinstance(event, ClearFinished) and event.clear.seq == 1:
            raise RuntimeError("display broke")

    lanes = [lane_of("A", [1, 2]), lane_of("B", [3])]
    scheduler = make_scheduler(lanes, sender, events, max_parallel=1, also=broken_display)
    await within(scheduler.run())
    assert sender.calls == [1]
    assert isinstance(scheduler.recording_error, RuntimeError)
    assert outcomes(events) == {
        1: ("succeeded", None),
        2: ("skipped", "recording_failed"),
        3: ("skipped", "recording_failed"),
    }
