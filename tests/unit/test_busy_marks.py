"""Busy marks: a call outlives the lock of a holder killed or cut mid-call.

Two lock objects on one state directory (or one Redis) are two processes' view. A
holder that marks its token busy and lets go without lifting the mark ("killed")
makes the next holder, in any process, rest until the mark's deadline; a known
outcome lifts the mark.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fakes import OK, TIMEOUT, FakeClock, ScriptedSender, lane_of
from lock_helpers import BOUND_S
from redis_server import redis_url  # noqa: F401

from orchestrator.run.events import (
    ClearFinished,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    RestReason,
    TokenResting,
)
from orchestrator.run.scheduler import Scheduler
from orchestrator.state.locks import FileLocks, LockError, TokenLocks, boot_clock
from orchestrator.state.redis_locks import BUSY_PREFIX, RedisLocks
from orchestrator.wolkvox.client import TokenInfo
from orchestrator.wolkvox.quota import check_quota

TOKEN = "abc"

# Takes the lock of argv[2] in state dir argv[1], marks it busy for 30 s as right before
# a call, says so, and waits for a line on stdin: the test kills it mid-"call".
CALLER_SNIPPET = """
import asyncio, sys
from pathlib import Path
from orchestrator.state.locks import FileLocks

async def main():
    locks = FileLocks(Path(sys.argv[1]))
    async with locks.hold(sys.argv[2]) as lease:
        assert await lease.confirm(busy_s=30.0)
        print("calling", flush=True)
        sys.stdin.readline()

asyncio.run(main())
"""


class SharedClock:
    """The clock every process on the host reads for busy marks, moved by the test."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def busy_left(locks: TokenLocks, token_id: str) -> float:
    async with asyncio.timeout(BOUND_S), locks.hold(token_id) as lease:
        return lease.busy_left_s


async def killed_mid_call(locks: TokenLocks, token_id: str, busy_s: float) -> None:
    """Hold, mark busy as right before a call, and let go without lifting the mark."""
    async with locks.hold(token_id) as lease:
        assert await lease.confirm(busy_s=busy_s)


# --- file locks --------------------------------------------------------------------


async def test_a_holder_killed_mid_call_leaves_the_next_holder_the_rest_of_its_deadline(
    tmp_path: Path,
) -> None:
    clock = SharedClock()
    a, b = FileLocks(tmp_path, clock=clock), FileLocks(tmp_path, clock=clock)
    await killed_mid_call(a, TOKEN, busy_s=90.0)
    a.forget(TOKEN)  # a lane's end never removes a mark still running
    assert await busy_left(b, TOKEN) == pytest.approx(90.0)
    clock.now += 30
    assert await busy_left(b, TOKEN) == pytest.approx(60.0)
    clock.now += 60
    assert await busy_left(b, TOKEN) == 0.0
    # The mark that ran out was dropped by the holder that found it, and its file goes
    # once the token is forgotten: no file piles up.
    assert b.path(TOKEN).read_bytes() == b""
    b.forget(TOKEN)
    assert list((tmp_path / "locks").iterdir()) == []


async def test_a_known_outcome_lifts_the_mark_and_leaves_no_file(tmp_path: Path) -> None:
    clock = SharedClock()
    a, b = FileLocks(tmp_path, clock=clock), FileLocks(tmp_path, clock=clock)
    async with a.hold(TOKEN) as lease:
        assert await lease.confirm(busy_s=90.0)
        assert a.path(TOKEN).read_text().split() == ["590.000", "90.000"]
        await lease.idle()
        assert a.path(TOKEN).read_bytes() == b""
    assert await busy_left(b, TOKEN) == 0.0
    a.forget(TOKEN)
    b.forget(TOKEN)
    assert list((tmp_path / "locks").iterdir()) == []


async def test_a_new_mark_never_shortens_one_still_running(tmp_path: Path) -> None:
    clock = SharedClock()
    a, b = FileLocks(tmp_path, clock=clock), FileLocks(tmp_path, clock=clock)
    await killed_mid_call(a, TOKEN, busy_s=90.0)
    await killed_mid_call(b, TOKEN, busy_s=10.0)
    assert await busy_left(a, TOKEN) == pytest.approx(90.0)


async def test_a_mark_from_before_a_reboot_waits_at_most_the_seconds_it_was_set_for(
    tmp_path: Path,
) -> None:
    clock = SharedClock()
    await killed_mid_call(FileLocks(tmp_path, clock=clock), TOKEN, busy_s=90.0)
    clock.now = 5.0  # the boot clock starts again at 0
    assert await busy_left(FileLocks(tmp_path, clock=clock), TOKEN) == pytest.approx(90.0)


async def test_an_unreadable_mark_is_refused_with_its_path(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path)
    locks.path(TOKEN).write_text("garbled")
    with pytest.raises(LockError, match=r"busy mark in \S*/abc\.lock is unreadable"):
        await busy_left(locks, TOKEN)


async def test_a_process_sigkilled_mid_call_leaves_its_mark_for_other_processes(
    tmp_path: Path,
) -> None:
    caller = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CALLER_SNIPPET,
        str(tmp_path),
        TOKEN,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BOUND_S):
            assert caller.stdout is not None
            assert await caller.stdout.readline() == b"calling\n"
    finally:
        os.kill(caller.pid, signal.SIGKILL)  # the OS drops its flock at once
        await caller.wait()
    # The real boot clock: the caller marked 30 s moments ago.
    assert 20.0 < await busy_left(FileLocks(tmp_path), TOKEN) <= 30.0


# --- the scheduler -------------------------------------------------------------------


def scheduler(
    locks: TokenLocks, sender: ScriptedSender, events: list[Event], clock: FakeClock
) -> Scheduler:
    return Scheduler(
        [lane_of("A", [1])],
        sender,
        max_parallel=1,
        cooldown_s=60.0,
        listeners=[events.append],
        clock=clock,
        backoff=lambda attempt, retry_after: 0.0,
        locks=locks,
    )


async def test_the_scheduler_rests_out_another_process_mark_before_calling(
    tmp_path: Path,
) -> None:
    lane = lane_of("A", [1])
    shared = SharedClock()
    await killed_mid_call(FileLocks(tmp_path, clock=shared), lane.token_id, busy_s=90.0)
    events: list[Event] = []
    clock, sender = FakeClock(), ScriptedSender()
    heard_at_call: list[list[Event]] = []
    sender.on_call = lambda seq: heard_at_call.append(list(events))
    locks = FileLocks(tmp_path, clock=shared)
    async with asyncio.timeout(BOUND_S):
        await scheduler(locks, sender, events, clock).run()
    [rest] = [e for e in events if isinstance(e, TokenResting)]
    assert (rest.reason, rest.rest_s, rest.answer) == (RestReason.BUSY_ELSEWHERE, 90.0, None)
    assert clock.sleeps == [pytest.approx(90.0)]
    [heard] = heard_at_call  # the call left only after the rest
    assert any(isinstance(e, TokenResting) for e in heard)
    [end] = [e for e in events if isinstance(e, ClearFinished)]
    assert (end.outcome, end.rested_ms) == (Outcome.SUCCEEDED, 90_000)


async def test_the_scheduler_marks_each_call_and_lifts_the_mark_after_a_known_answer(
    tmp_path: Path,
) -> None:
    lane = lane_of("A", [1])
    lock_file = tmp_path / "locks" / f"{lane.token_id}.lock"
    marked_at_call: list[bool] = []
    sender = ScriptedSender({1: [TIMEOUT, OK]})
    sender.on_call = lambda seq: marked_at_call.append(lock_file.stat().st_size > 0)
    async with asyncio.timeout(BOUND_S):
        await scheduler(FileLocks(tmp_path), sender, [], FakeClock()).run()
    assert marked_at_call == [True, True]
    # Lifted after the timeout's full rest, and after the answer; the file goes at lane end.
    assert list((tmp_path / "locks").iterdir()) == []


async def test_a_call_cut_by_a_second_interrupt_leaves_its_mark(tmp_path: Path) -> None:
    lane = lane_of("A", [1])
    shared = SharedClock()
    sender = ScriptedSender()
    sender.gate(1)
    events: list[Event] = []
    run = scheduler(FileLocks(tmp_path, clock=shared), sender, events, FakeClock())
    async with asyncio.timeout(BOUND_S):
        running = asyncio.create_task(run.run())
        await sender.started[1].wait()
        run.interrupt()
        run.interrupt()
        await running
    [end] = [e for e in events if isinstance(e, ClearFinished)]
    assert end.reason is Reason.INTERRUPTED
    timeout_s = lane.clears[0].timeout_s
    left = await busy_left(FileLocks(tmp_path, clock=shared), lane.token_id)
    assert left == pytest.approx(timeout_s + 60.0)


async def test_a_halt_ends_a_rest_for_another_process_mark_and_nothing_is_sent(
    tmp_path: Path,
) -> None:
    lane = lane_of("A", [1])
    shared = SharedClock()
    await killed_mid_call(FileLocks(tmp_path, clock=shared), lane.token_id, busy_s=90.0)
    events: list[Event] = []
    sender = ScriptedSender()
    resting = asyncio.Event()

    class StuckClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            resting.set()
            await asyncio.Event().wait()  # until the halt cancels it

    run = scheduler(FileLocks(tmp_path, clock=shared), sender, events, StuckClock())
    async with asyncio.timeout(BOUND_S):
        running = asyncio.create_task(run.run())
        await resting.wait()
        run.interrupt()
        await running
    assert sender.calls == []
    assert not any(isinstance(e, ClearStarted) for e in events)
    [end] = [e for e in events if isinstance(e, ClearFinished)]
    assert (end.outcome, end.reason) == (Outcome.SKIPPED, Reason.INTERRUPTED)
    # The other process's mark still stands for whoever comes next.
    left = await busy_left(FileLocks(tmp_path, clock=shared), lane.token_id)
    assert left == pytest.approx(90.0)


# --- Redis ---------------------------------------------------------------------------


@pytest.fixture
async def two_hosts(
    redis_url: str,  # noqa: F811
) -> AsyncIterator[tuple[RedisLocks, RedisLocks, aioredis.Redis]]:
    """Two RedisLocks on one Redis ("two hosts"), and a raw client to look at the keys."""
    a = await RedisLocks.connect(redis_url, fence_s=0)
    b = await RedisLocks.connect(redis_url, fence_s=0)
    raw = aioredis.Redis.from_url(redis_url)
    yield a, b, raw
    await a.aclose()
    await b.aclose()
    await raw.aclose()


@pytest.fixture
def token() -> str:
    """A token id no other test uses, so tests can share one Redis."""
    return f"t{uuid.uuid4().hex[:12]}"


HostsFixture = tuple[RedisLocks, RedisLocks, aioredis.Redis]


async def test_redis_a_holder_killed_mid_call_leaves_a_busy_key_the_next_host_waits_out(
    two_hosts: HostsFixture, token: str
) -> None:
    a, b, raw = two_hosts
    await killed_mid_call(a, token, busy_s=30.0)
    # Redis expires it by itself: a host that never comes back cannot block the token.
    assert 25_000 < await raw.pttl(BUSY_PREFIX + token) <= 30_000
    assert 25.0 < await busy_left(b, token) <= 30.0


async def test_redis_a_known_outcome_deletes_the_busy_key(
    two_hosts: HostsFixture, token: str
) -> None:
    a, b, raw = two_hosts
    async with a.hold(token) as lease:
        assert await lease.confirm(busy_s=30.0)
        await lease.idle()
    assert await raw.exists(BUSY_PREFIX + token) == 0
    assert await busy_left(b, token) == 0.0


async def test_redis_a_lease_that_cannot_be_confirmed_marks_nothing(
    two_hosts: HostsFixture, token: str
) -> None:
    a, _, raw = two_hosts
    async with a.hold(token) as lease:
        await raw.delete("orchestrator:token-lock:" + token)  # the lease is gone
        assert not await lease.confirm(busy_s=30.0)
    assert await raw.exists(BUSY_PREFIX + token) == 0


async def test_redis_a_new_busy_key_never_shortens_one_still_running(
    two_hosts: HostsFixture, token: str
) -> None:
    a, b, _ = two_hosts
    await killed_mid_call(a, token, busy_s=30.0)
    await killed_mid_call(b, token, busy_s=1.0)
    assert await busy_left(a, token) > 25.0


async def test_a_rest_after_a_timeout_cut_by_a_second_interrupt_leaves_the_mark(
    tmp_path: Path,
) -> None:
    lane = lane_of("A", [1])
    shared = SharedClock()
    resting = asyncio.Event()

    class StuckClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            resting.set()
            await asyncio.Event().wait()  # until the second interrupt cuts it

    events: list[Event] = []
    sender = ScriptedSender({1: [TIMEOUT]})
    run = scheduler(FileLocks(tmp_path, clock=shared), sender, events, StuckClock())
    async with asyncio.timeout(BOUND_S):
        running = asyncio.create_task(run.run())
        await resting.wait()
        run.interrupt()
        run.interrupt()
        await running
    assert sender.calls == [1]
    left = await busy_left(FileLocks(tmp_path, clock=shared), lane.token_id)
    assert left == pytest.approx(lane.clears[0].timeout_s + 60.0)


class UnmarkableLocks(FileLocks):
    """File locks whose busy mark cannot be written (a full disk, say)."""

    async def _mark_busy(self, fd: int, path: Path, seconds: float) -> bool:
        raise LockError(f"cannot write busy mark to {path.name}: No space left on device")


async def test_a_call_whose_busy_mark_cannot_be_made_is_not_sent(tmp_path: Path) -> None:
    events: list[Event] = []
    sender = ScriptedSender()
    async with asyncio.timeout(BOUND_S):
        await scheduler(UnmarkableLocks(tmp_path), sender, events, FakeClock()).run()
    assert sender.calls == []
    [end] = [e for e in events if isinstance(e, ClearFinished)]
    assert (end.outcome, end.reason, end.attempts) == (Outcome.SKIPPED, Reason.LOCK_LOST, 0)
    assert end.error is not None and "No space left on device" in end.error


async def test_the_quota_check_waits_out_a_busy_mark_before_its_call(tmp_path: Path) -> None:
    # The real boot clock, with a mark a fraction of a second long: the check's call
    # must not leave before the deadline the mark holds.
    lane = lane_of("A", [1])
    await killed_mid_call(FileLocks(tmp_path), lane.token_id, busy_s=0.2)
    mark = tmp_path / "locks" / f"{lane.token_id}.lock"
    until = float(mark.read_text().split()[0])
    called_at: list[float] = []

    class Client:
        async def token_info(self, server: str, token: object, timeout_s: float) -> TokenInfo:
            called_at.append(boot_clock())
            return TokenInfo(token_limit=1000, token_use_today=0)

    async with asyncio.timeout(BOUND_S):
        await check_quota([lane], Client(), locks=FileLocks(tmp_path))  # type: ignore[arg-type]
    assert len(called_at) == 1
    assert called_at[0] >= until
