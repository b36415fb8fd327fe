"""Redis locks against a live redis-server: leases, renewal, fencing after a loss of data."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from lock_helpers import (
    BOUND_S,
    STAYS_OUT_S,
    assert_excludes,
    closed_port,
    hold_until,
    stays_unset,
    until,
)
from redis_server import RedisServer, redis_url, start_redis_server  # noqa: F401

from orchestrator.state.locks import (
    FileLocks,
    Lease,
    LockError,
    open_token_locks,
)
from orchestrator.state.redis_locks import EPOCH_KEY, RedisLocks, describe_lock_url

KEY_PREFIX = "orchestrator:token-lock:"


@pytest.fixture
def token() -> str:
    """A token id no other test uses, so tests can share one Redis."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def connect_redis(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisLocks]]]:  # noqa: F811
    """Connect as many RedisLocks ("hosts") as a test needs; all closed afterwards."""
    opened: list[RedisLocks] = []

    async def connect(ttl_s: float = 30.0) -> RedisLocks:
        locks = await RedisLocks.connect(redis_url, ttl_s=ttl_s, fence_s=0)
        opened.append(locks)
        return locks

    yield connect
    for locks in opened:
        await locks.aclose()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    """A third client that plays another party meddling with the keys."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# --- RedisLocks -----------------------------------------------------------------------


async def test_redis_lease_is_set_with_ttl_and_removed_on_release(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    locks = await connect_redis(ttl_s=30.0)
    async with locks.hold(token) as lease:
        assert lease == Lease(token, 0.0)
        assert 0 < await raw_redis.pttl(KEY_PREFIX + token) <= 30_000
    assert await raw_redis.exists(KEY_PREFIX + token) == 0


async def test_redis_forget_while_held_still_excludes_and_a_forgotten_token_is_taken_again(
    connect_redis: Callable[..., Awaitable[RedisLocks]], token: str
) -> None:
    locks = await connect_redis()
    entered, leave = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(locks, token, entered, leave))
    await entered.wait()
    locks.forget(token)  # held: the second hold below must still queue behind the first
    second_in, second_leave = asyncio.Event(), asyncio.Event()
    second = asyncio.create_task(hold_until(locks, token, second_in, second_leave))
    assert await stays_unset(second_in)
    leave.set()
    await asyncio.wait_for(second_in.wait(), BOUND_S)
    second_leave.set()
    assert (await holder).waited_s == 0.0
    assert (await second).waited_s >= STAYS_OUT_S
    locks.forget(token)
    async with asyncio.timeout(BOUND_S), locks.hold(token) as lease:
        assert lease.waited_s == 0.0


async def test_redis_locks_of_two_hosts_exclude_each_other(
    connect_redis: Callable[..., Awaitable[RedisLocks]], token: str
) -> None:
    await assert_excludes(await connect_redis(), await connect_redis(), token)


async def test_redis_holds_through_one_instance_exclude_each_other(
    connect_redis: Callable[..., Awaitable[RedisLocks]], token: str
) -> None:
    locks = await connect_redis()
    await assert_excludes(locks, locks, token)


async def test_redis_renewal_keeps_lease_past_ttl(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    first, second = await connect_redis(ttl_s=0.3), await connect_redis(ttl_s=0.3)
    entered, leave = asyncio.Event(), asyncio.Event()
    async with first.hold(token) as lease:
        waiter = asyncio.create_task(hold_until(second, token, entered, leave))
        # Over three ttls: without renewal the lease would have expired and let `second` in.
        assert await stays_unset(entered, 1.0)
        assert not lease.lost
        assert await raw_redis.pttl(KEY_PREFIX + token) > 0
    async with asyncio.timeout(BOUND_S):
        await entered.wait()
        leave.set()
        await waiter
    assert not lease.lost


async def test_redis_lease_taken_over_is_lost_and_not_deleted(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    locks = await connect_redis(ttl_s=0.3)
    async with locks.hold(token) as lease:
        # Another owner after an expiry, as far as Redis can tell.
        await raw_redis.set(KEY_PREFIX + token, "someone-else", px=30_000)
        await until(lambda: lease.lost)
    assert await raw_redis.get(KEY_PREFIX + token) == b"someone-else"


async def test_redis_lease_deleted_is_lost(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    locks = await connect_redis(ttl_s=0.3)
    async with locks.hold(token) as lease:
        await raw_redis.delete(KEY_PREFIX + token)
        await until(lambda: lease.lost)


async def test_redis_lease_lost_when_redis_goes_away(tmp_path: Path, token: str) -> None:
    server = start_redis_server(tmp_path)
    try:
        locks = await RedisLocks.connect(server.url, ttl_s=0.3, fence_s=0)
        try:
            started = time.monotonic()
            async with locks.hold(token) as lease:
                server.stop()
                await until(lambda: lease.lost)
                # Not before the lease could really have expired.
                assert time.monotonic() - started >= 0.3
        finally:
            await locks.aclose()
    finally:
        server.stop()


async def test_redis_released_when_body_raises(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    locks = await connect_redis()
    with pytest.raises(RuntimeError, match="boom"):
        async with locks.hold(token):
            raise RuntimeError("boom")
    assert await raw_redis.exists(KEY_PREFIX + token) == 0


async def test_redis_released_when_holder_cancelled(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    locks = await connect_redis()
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_until(locks, token, entered, asyncio.Event()))
    await entered.wait()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert await raw_redis.exists(KEY_PREFIX + token) == 0


async def test_redis_waiter_cancelled_does_not_take_the_lease(
    connect_redis: Callable[..., Awaitable[RedisLocks]], raw_redis: aioredis.Redis, token: str
) -> None:
    first, second = await connect_redis(), await connect_redis()
    async with first.hold(token):
        owner = await raw_redis.get(KEY_PREFIX + token)
        waiter = asyncio.create_task(hold_until(second, token, asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(STAYS_OUT_S)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await raw_redis.get(KEY_PREFIX + token) == owner
    assert await raw_redis.exists(KEY_PREFIX + token) == 0


async def test_redis_connect_to_closed_port_fails_fast() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    with pytest.raises(LockError, match=f"cannot reach Redis at {url}: "):
        await RedisLocks.connect(url, fence_s=0)
    assert time.monotonic() - started < 2.0


async def assert_password_hidden(port: int) -> None:
    """Connecting with a password to ``port`` fails without showing the password."""
    url = f"redis://ops:s3cret-pw@127.0.0.1:{port}/0"
    with pytest.raises(LockError) as caught:
        await RedisLocks.connect(url, fence_s=0)
    message = str(caught.value)
    assert message.startswith(f"cannot reach Redis at redis://ops:***@127.0.0.1:{port}/0: ")
    assert "s3cret-pw" not in message


async def test_redis_connect_error_hides_the_password_when_unreachable() -> None:
    await assert_password_hidden(closed_port())


async def test_redis_connect_error_hides_the_password_when_refused(redis_url: str) -> None:  # noqa: F811
    # The test server has no such user: Redis answers WRONGPASS.
    await assert_password_hidden(int(redis_url.rsplit(":", 1)[1].split("/")[0]))


async def test_redis_connect_refuses_a_url_that_is_not_redis() -> None:
    with pytest.raises(LockError, match="invalid Redis URL"):
        await RedisLocks.connect("http://user:pw@example.invalid/", fence_s=0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://ops:pw@h:6379/0", "redis://ops:***@h:6379/0"),
        ("redis://:pw@h:6379/2", "redis://***@h:6379/2"),
        ("redis://lonely-secret@h/0", "redis://***@h/0"),
        ("rediss://ops:p%40ss@h:6380/0", "rediss://ops:***@h:6380/0"),
        ("redis://ops:pa#ss@h/0", "redis://ops:***@h/0"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=***"),
    ],
)
def test_describe_lock_url_hides_passwords(url: str, shown: str) -> None:
    assert describe_lock_url(url) == shown


# --- Redis fencing (issue 16, item 3) --------------------------------------------------

FENCE_S = 150.0


class FenceClock:
    """A monotonic clock that moves only when the fence sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own: fences set here reach no other test."""
    server = start_redis_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def fenced(
    own_redis: RedisServer,
) -> AsyncIterator[Callable[[FenceClock], Awaitable[RedisLocks]]]:
    """Connect RedisLocks to ``own_redis`` with a fence of FENCE_S timed by a FenceClock."""
    opened: list[RedisLocks] = []

    async def connect(clock: FenceClock) -> RedisLocks:
        locks = await RedisLocks.connect(
            own_redis.url, fence_s=FENCE_S, clock=clock, sleep=clock.sleep
        )
        opened.append(locks)
        return locks

    yield connect
    for locks in opened:
        await locks.aclose()


async def seed_epoch(server: RedisServer) -> None:
    """What a Redis that kept its data holds: the epoch of the processes before."""
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set(EPOCH_KEY, "kept")
    finally:
        await client.aclose()


async def test_redis_that_kept_its_epoch_lets_a_new_process_call_at_once(
    own_redis: RedisServer, fenced: Callable[[FenceClock], Awaitable[RedisLocks]]
) -> None:
    await seed_epoch(own_redis)
    clock = FenceClock()
    locks = await fenced(clock)
    assert locks.fence_left_s == 0.0
    async with locks.hold("abc") as lease:
        assert lease.waited_s == 0.0
        assert await lease.confirm(busy_s=0)
    assert clock.slept == []


async def test_redis_without_an_epoch_keeps_a_new_process_off_every_token_for_the_fence(
    fenced: Callable[[FenceClock], Awaitable[RedisLocks]],
) -> None:
    # A Redis with no epoch may have been restarted empty a moment ago, while another
    # host's call was in flight: nothing tells that apart from a brand-new Redis.
    clock = FenceClock()
    locks = await fenced(clock)
    assert FENCE_S - 1 < locks.fence_left_s <= FENCE_S
    async with locks.hold("abc") as lease:
        assert clock.slept and FENCE_S - 1 < sum(clock.slept) <= FENCE_S
        assert lease.waited_s > 0
    async with locks.hold("def"):
        pass
    assert len(clock.slept) == 1  # one wait for the process, not one per token


async def test_redis_restarted_empty_while_a_lease_is_held_fences_every_process(
    own_redis: RedisServer, fenced: Callable[[FenceClock], Awaitable[RedisLocks]]
) -> None:
    await seed_epoch(own_redis)
    clock_a, clock_b, clock_c = FenceClock(), FenceClock(), FenceClock()
    host_a = await fenced(clock_a)
    async with host_a.hold("abc") as lease_a:
        own_redis.restart_empty()  # A's call is in flight; Redis forgets A's lease
        # B starts now, on another host: it must not call on "abc" (nor any token)
        # until A's call, which may run for timeout_s and rest cooldown_s, is over.
        host_b = await fenced(clock_b)
        assert FENCE_S - 1 < host_b.fence_left_s <= FENCE_S
        async with host_b.hold("abc") as lease_b:
            assert FENCE_S - 1 < sum(clock_b.slept) <= FENCE_S
            assert await lease_b.confirm(busy_s=0)
            # A holder re-checks right before each call: A's lease is gone.
            assert not await lease_a.confirm(busy_s=0)
            assert lease_a.lost
            # C starts while B's fence is still up: it waits out the rest of it.
            clock_c.now = clock_b.now  # C's clock does not matter; Redis keeps the fence
            host_c = await fenced(clock_c)
            assert host_c.fence_left_s > FENCE_S - 1
    # A's next token: the epoch changed under A, so A waits the fence out as well.
    async with host_a.hold("def"):
        assert FENCE_S - 1 < sum(clock_a.slept) <= FENCE_S


async def test_redis_flushed_between_acquire_and_call_stops_the_call(
    own_redis: RedisServer, fenced: Callable[[FenceClock], Awaitable[RedisLocks]]
) -> None:
    await seed_epoch(own_redis)
    locks = await fenced(FenceClock())
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        async with locks.hold("abc") as lease:
            assert await lease.confirm(busy_s=0)
            await client.flushall()
            assert not await lease.confirm(busy_s=0)
            assert lease.lost
    finally:
        await client.aclose()


async def test_redis_that_cannot_answer_a_confirmation_vouches_for_nothing(
    own_redis: RedisServer, fenced: Callable[[FenceClock], Awaitable[RedisLocks]]
) -> None:
    await seed_epoch(own_redis)
    locks = await fenced(FenceClock())
    async with locks.hold("abc") as lease:
        own_redis.stop()
        assert not await lease.confirm(busy_s=0)


# --- redis, an optional extra ----------------------------------------------------------


async def test_a_lock_url_without_the_redis_package_is_a_clear_lock_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "orchestrator.state.redis_locks")
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(LockError, match=r"pip install 'orchestrator\[redis\]'"):
        await open_token_locks(tmp_path, "redis://127.0.0.1:1/0", fence_s=0, warn=print)


async def test_open_token_locks_warns_of_a_fence_and_picks_file_locks_without_a_url(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    said: list[str] = []
    file_locks = await open_token_locks(tmp_path, None, fence_s=FENCE_S, warn=said.append)
    assert isinstance(file_locks, FileLocks) and said == []
    redis_locks = await open_token_locks(tmp_path, own_redis.url, fence_s=FENCE_S, warn=said.append)
    await redis_locks.aclose()
    (line,) = said
    assert f"Redis at {own_redis.url} cannot prove it kept the token leases" in line
    assert "no call for 150 s" in line
