"""The scheduler's pools: free tokens take the next campaign, and every safety rule holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

from fakes import BAD_REQUEST, OK, QUOTA, REJECTED, UNAVAILABLE, FakeClock, make_clear, make_lane
from test_scheduler import BOUND_S, ScriptedLocks, finished, make_scheduler, outcomes, within

from orchestrator.plan.model import Clear, Lane, OnFailure, Secret, Token, TokenPool, TokenRef
from orchestrator.run.events import ClearStarted, Event, TokenLeftPool
from orchestrator.run.scheduler import Scheduler
from orchestrator.state.locks import Lease, LockError
from orchestrator.wolkvox.client import Answer


def pool_lane(names: list[str], campaigns: int, clears: int = 2, **fields: object) -> Lane:
    """A pool of ``names`` serving ``campaigns`` campaigns of ``clears`` clears each."""
    refs = tuple(TokenRef("env", name) for name in names)
    chain = [
        make_clear(c * clears + r + 1, campaign=str(5000 + c), token=TokenPool(refs), **fields)
        for c in range(campaigns)
        for r in range(clears)
    ]
    tokens = tuple(Token(secret_of(n).token_id, (f"env:{n}",), secret_of(n)) for n in names)
    return Lane("pool-1", tuple(f"env:{n}" for n in names), None, tuple(chain), tokens)


def secret_of(name: str) -> Secret:
    return Secret(f"token-{name}")


def tid(name: str) -> str:
    return secret_of(name).token_id


class PoolSender:
    """Answers OK, or from ``by_token`` for a token; tracks calls in flight per token and campaign.

    ``gates`` hold the call of a seq open until the test sets it.
    """

    def __init__(self, by_token: dict[str, Answer] | None = None) -> None:
        self.by_token = by_token or {}
        self.by_seq: dict[int, list[Answer]] = {}
        self.calls: list[tuple[int, str]] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.started: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.campaign_in_flight: dict[str, int] = defaultdict(int)
        self.max_campaign_in_flight: dict[str, int] = defaultdict(int)

    async def __call__(self, clear: Clear, token: Secret) -> Answer:
        self.calls.append((clear.seq, token.token_id))
        tid, campaign = token.token_id, clear.campaign_id
        self.in_flight[tid] += 1
        self.campaign_in_flight[campaign] += 1
        self.max_in_flight[tid] = max(self.max_in_flight[tid], self.in_flight[tid])
        self.max_campaign_in_flight[campaign] = max(
            self.max_campaign_in_flight[campaign], self.campaign_in_flight[campaign]
        )
        try:
            self.started[clear.seq].set()
            if clear.seq in self.gates:
                await self.gates[clear.seq].wait()
            await asyncio.sleep(0)
            if tid in self.by_token:
                return self.by_token[tid]
            answers = self.by_seq.get(clear.seq, [OK])
            attempt = sum(1 for seq, _ in self.calls if seq == clear.seq)
            return answers[min(attempt, len(answers)) - 1]
        finally:
            self.in_flight[tid] -= 1
            self.campaign_in_flight[campaign] -= 1

    def tokens_of(self, *seqs: int) -> set[str]:
        return {token for seq, token in self.calls if seq in seqs}


async def test_a_pool_runs_every_campaign_one_call_per_token_and_per_campaign() -> None:
    sender, events = PoolSender(), []
    lane = pool_lane(["A", "B", "C"], campaigns=7, clears=3)
    await within(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    assert outcomes(events) == {seq: ("succeeded", None) for seq in range(1, 22)}
    assert set(sender.max_in_flight.values()) == {1}
    assert set(sender.max_campaign_in_flight.values()) == {1}
    assert {token for _, token in sender.calls} == {tid("A"), tid("B"), tid("C")}
    for chain in lane.campaigns():
        seqs = [c.seq for c in chain]
        # A campaign's clears go in plan order, all on the token that started it.
        assert [seq for seq, _ in sender.calls if seq in seqs] == seqs
        assert len(sender.tokens_of(*seqs)) == 1


async def test_whichever_token_is_free_takes_the_next_campaign_in_order() -> None:
    sender, events = PoolSender(), []
    sender.gates[1] = asyncio.Event()  # campaign 1 keeps its token busy
    lane = pool_lane(["A", "B"], campaigns=4)
    task = asyncio.create_task(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    await within(sender.started[8].wait())
    assert [seq for seq, _ in sender.calls] == [1, 3, 4, 5, 6, 7, 8]
    assert sender.tokens_of(3, 4, 5, 6, 7, 8) == {t for _, t in sender.calls[1:2]}
    sender.gates[1].set()
    await within(task)
    assert [seq for seq, _ in sender.calls][-1] == 2
    assert sender.tokens_of(1, 2) != sender.tokens_of(3)


async def test_a_rejected_token_leaves_the_pool_and_its_campaign_carries_on_with_another() -> None:
    sender, events = PoolSender({tid("A"): REJECTED}), []
    lane = pool_lane(["A", "B"], campaigns=3, retries=0)
    await within(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    assert outcomes(events) == {seq: ("succeeded", None) for seq in range(1, 7)}
    (left,) = [e for e in events if isinstance(e, TokenLeftPool)]
    assert (left.token_id, left.reason.value, left.tokens_left) == (tid("A"), "token_rejected", 1)
    assert left.pool_id == "pool-1"
    first = finished(events)[left.clear.seq]
    # Its refused attempt is counted, but is no retry of the clear: retries 0 still succeeds.
    assert (first.token_id, first.attempts) == (tid("B"), 2)
    assert sender.calls.count((left.clear.seq, tid("A"))) == 1
    assert {t for seq, t in sender.calls if seq != left.clear.seq} == {tid("B")}


async def test_a_token_out_of_quota_leaves_the_pool_mid_campaign() -> None:
    sender, events = PoolSender(), []
    lane = pool_lane(["A", "B"], campaigns=2, clears=3)

    def spend_a_after_its_first_clear(event: Event) -> None:
        if isinstance(event, ClearStarted) and event.token_id == tid("A"):
            sender.by_token[tid("A")] = QUOTA

    await within(
        make_scheduler([lane], sender, events, also=spend_a_after_its_first_clear).run()  # type: ignore[arg-type]
    )
    assert outcomes(events) == {seq: ("succeeded", None) for seq in range(1, 7)}
    (left,) = [e for e in events if isinstance(e, TokenLeftPool)]
    assert left.reason.value == "token_quota_exhausted"
    started = [e for e in events if isinstance(e, ClearStarted)]
    # Every clear of the campaign A had started still ran in order, after B was free.
    assert [e.clear.seq for e in started if e.clear.campaign_id == left.clear.campaign_id] == [
        left.clear.seq,
        left.clear.seq,
        left.clear.seq + 1,
        left.clear.seq + 2,
    ]


async def test_an_empty_pool_skips_the_rest_with_the_reason() -> None:
    sender, events = PoolSender({tid("A"): REJECTED, tid("B"): QUOTA}), []
    lane = pool_lane(["A", "B"], campaigns=3)
    await within(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    ends = finished(events)
    assert len(ends) == 6
    assert len([e for e in events if isinstance(e, TokenLeftPool)]) == 2
    # Each token made one call, refused; those clears failed, the rest were never sent.
    assert sorted(token for _, token in sender.calls) == sorted([tid("A"), tid("B")])
    sent = {seq for seq, _ in sender.calls}
    assert {(ends[s].outcome.value, ends[s].attempts) for s in sent} == {("failed", 1)}
    last = [e for e in events if isinstance(e, TokenLeftPool)][-1].reason
    assert {(e.outcome.value, e.reason) for s, e in ends.items() if s not in sent} == {
        ("skipped", last)
    }


async def test_on_failure_stop_in_a_pool_stops_that_campaign_only() -> None:
    sender, events = PoolSender(), []
    sender.by_seq[3] = [BAD_REQUEST]
    lane = pool_lane(["A", "B"], campaigns=3, on_failure=OnFailure.STOP)
    await within(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    result = outcomes(events)
    assert result[3] == ("failed", "rejected")
    assert result[4] == ("skipped", "blocked_by_failure")
    assert finished(events)[4].blocked_by == 3
    assert {result[s] for s in (1, 2, 5, 6)} == {("succeeded", None)}


async def test_on_failure_abort_in_a_pool_stops_the_run() -> None:
    sender, events = PoolSender(), []
    sender.by_seq[1] = [BAD_REQUEST]
    lane = pool_lane(["A"], campaigns=3, on_failure=OnFailure.ABORT)
    await within(make_scheduler([lane], sender, events).run())  # type: ignore[arg-type]
    result = outcomes(events)
    assert result[1] == ("failed", "rejected")
    assert {result[s] for s in range(2, 7)} == {("skipped", "aborted")}


async def test_a_token_in_a_pool_and_alone_never_has_two_calls_at_once() -> None:
    sender, events = PoolSender(), []
    pool = pool_lane(["A", "B"], campaigns=6)
    alone = make_lane("A", *(make_clear(seq, token=TokenRef("env", "A")) for seq in range(13, 25)))
    await within(make_scheduler([pool, alone], sender, events).run())  # type: ignore[arg-type]
    assert len(outcomes(events)) == 24
    assert sender.max_in_flight[tid("A")] == 1
    assert sender.tokens_of(*range(13, 25)) == {tid("A")}


async def test_a_pool_uses_no_more_tokens_than_max_parallel() -> None:
    sender, events = PoolSender(), []
    sender.gates.update({1: asyncio.Event(), 3: asyncio.Event()})
    lane = pool_lane(["A", "B", "C"], campaigns=3)
    scheduler = make_scheduler([lane], sender, events, max_parallel=2)  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[1].wait())
    await within(sender.started[3].wait())
    for _ in range(10):
        await asyncio.sleep(0)
    assert [seq for seq, _ in sender.calls] == [1, 3]
    sender.gates[1].set()
    sender.gates[3].set()
    await within(task)
    assert len(outcomes(events)) == 6


async def test_a_retry_stays_on_the_token_of_its_campaign() -> None:
    sender, events = PoolSender(), []
    sender.by_seq[1] = [UNAVAILABLE, UNAVAILABLE, OK]
    lane = pool_lane(["A", "B"], campaigns=2)
    await within(make_scheduler([lane], sender, events, clock=FakeClock()).run())  # type: ignore[arg-type]
    assert finished(events)[1].attempts == 3
    assert len(sender.tokens_of(1, 2)) == 1


async def test_a_resting_pool_token_is_not_used_before_its_cooldown() -> None:
    sender, events, clock = PoolSender(), [], FakeClock()
    lane = pool_lane(["A"], campaigns=1)
    scheduler = make_scheduler([lane], sender, events, clock=clock, cooldown_s=60.0)  # type: ignore[arg-type]
    scheduler._cooling_tokens = frozenset({tid("A")})
    await asyncio.wait_for(scheduler.run(), BOUND_S)
    assert clock.sleeps[0] == 60.0
    assert len(outcomes(events)) == 2


class OneBrokenLock(ScriptedLocks):
    """Token A's lock service is gone; every other token's lock holds."""

    @contextlib.asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        if token_id == tid("A"):
            raise LockError("lost contact with Redis")
        async with super().hold(token_id) as lease:
            yield lease


async def test_a_token_whose_lock_is_lost_leaves_the_pool_without_sending() -> None:
    sender, events, locks = PoolSender(), [], OneBrokenLock()
    scheduler = Scheduler(
        [pool_lane(["A", "B"], campaigns=3)],
        sender,
        max_parallel=4,
        cooldown_s=0,
        listeners=[events.append],
        clock=FakeClock(),
        locks=locks,
    )
    await within(scheduler.run())
    assert outcomes(events) == {seq: ("succeeded", None) for seq in range(1, 7)}
    assert {token for _, token in sender.calls} == {tid("B")}
    (left,) = [e for e in events if isinstance(e, TokenLeftPool)]
    assert (left.token_id, left.reason.value) == (tid("A"), "lock_lost")


async def test_an_interrupt_lets_the_pools_calls_finish_and_starts_no_campaign() -> None:
    sender, events = PoolSender(), []
    sender.gates.update({1: asyncio.Event(), 3: asyncio.Event()})
    scheduler = make_scheduler([pool_lane(["A", "B"], campaigns=4)], sender, events)  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    await within(sender.started[1].wait())
    await within(sender.started[3].wait())
    scheduler.interrupt()
    sender.gates[1].set()
    sender.gates[3].set()
    await within(task)
    result = outcomes(events)
    assert (result[1], result[3]) == (("succeeded", None), ("succeeded", None))
    assert {result[s] for s in (2, 4, 5, 6, 7, 8)} == {("skipped", "interrupted")}
    assert sorted(seq for seq, _ in sender.calls) == [1, 3]
