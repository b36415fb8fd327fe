"""Token locks against the real things: flock between processes, and a live redis-server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import redis_url, start_redis_server  # noqa: F401

from orchestrator.errors import OrchestratorError
from orchestrator.state.locks import (
    FileLocks,
    Lease,
    LockError,
    NoLocks,
    RedisLocks,
    RunLock,
    TokenLocks,
    describe_lock_url,
)

#: Upper bound on anything a test waits for; reached only when the code is broken.
BOUND_S = 5.0
#: How long a waiter must stay out to count as "kept waiting".
STAYS_OUT_S = 0.05
KEY_PREFIX = "orchestrator:token-lock:"

# Holds an flock on argv[1] from a second process until a line arrives on stdin.
HOLDER_SNIPPET = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""
# Exits 0 when it could take the flock on argv[1] at once, 1 when it is held elsewhere.
PROBE_SNIPPET = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""


@pytest.fixture
def token() -> str:
    """A token id no other test uses, so tests can share one Redis."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def file_locks(tmp_path: Path) -> AsyncIterator[FileLocks]:
    locks = FileLocks(tmp_path)
    yield locks
    await locks.aclose()


@pytest.fixture
async def connect_redis(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisLocks]]]:  # noqa: F811
    """Connect as many RedisLocks ("hosts") as a test needs; all closed afterwards."""
    opened: list[RedisLocks] = []

    async def connect(ttl_s: float = 30.0) -> RedisLocks:
        locks = await RedisLocks.connect(redis_url, ttl_s=ttl_s)
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


async def hold_until(
    locks: TokenLocks, token_id: str, entered: asyncio.Event, leave: asyncio.Event
) -> Lease:
    """Hold ``token_id``, signal ``entered``, and stay until ``leave`` is set."""
    async with locks.hold(token_id) as lease:
        entered.set()
        await leave.wait()
    return lease


async def stays_unset(event: asyncio.Event, seconds: float = STAYS_OUT_S) -> bool:
    """True when ``event`` is still not set after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return True
    return False


async def until(condition: Callable[[], bool], bound_s: float = BOUND_S) -> None:
    """Wait, polling, until ``condition()`` holds; fail after ``bound_s``."""
    # Lease.lost is a plain flag with no event to await, so polling it is the only way.
    async with asyncio.timeout(bound_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def assert_excludes(first: TokenLocks, second: TokenLocks, token_id: str) -> None:
    """While ``first`` holds ``token_id``, ``second`` waits; then it gets in and says it waited."""
    entered_first, leave_first = asyncio.Event(), asyncio.Event()
    entered_second, leave_second = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(BOUND_S):
        one = asyncio.create_task(hold_until(first, token_id, entered_first, leave_first))
        await entered_first.wait()
        two = asyncio.create_task(hold_until(second, token_id, entered_second, leave_second))
        assert await stays_unset(entered_second)
        leave_first.set()
        await entered_second.wait()
        leave_second.set()
        assert (await one).waited_s == 0.0
        assert (await two).waited_s >= STAYS_OUT_S


async def run_probe(path: Path) -> int:
    """Exit status of another process trying the lock file: 0 took it, 1 held elsewhere."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE_SNIPPET, str(path))
    async with asyncio.timeout(BOUND_S):
        return await process.wait()


def closed_port() -> int:
    """A loopback port nothing listens on (just freed by us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- NoLocks --------------------------------------------------------------------------


async def test_no_locks_yields_at_once() -> None:
    locks = NoLocks()
    async with locks.hold("abc") as lease:
        assert lease == Lease("abc", 0.0)
    await locks.aclose()


# --- FileLocks ------------------------------------------------------------------------


async def test_file_lock_free_at_once_waits_zero(file_locks: FileLocks, tmp_path: Path) -> None:
    async with file_locks.hold("abc123") as lease:
        assert lease == Lease("abc123", 0.0, lost=False)
    assert (tmp_path / "locks" / "abc123.lock").is_file()
    async with file_locks.hold("abc123") as again:
        assert again.waited_s == 0.0


async def test_file_locks_of_two_instances_exclude_each_other(tmp_path: Path) -> None:
    first, second = FileLocks(tmp_path), FileLocks(tmp_path)
    try:
        await assert_excludes(first, second, "abc")
    finally:
        await first.aclose()
        await second.aclose()


async def test_file_lock_holds_through_one_instance_exclude_each_other(
    file_locks: FileLocks,
) -> None:
    await assert_excludes(file_locks, file_locks, "abc")


async def test_file_lock_other_tokens_do_not_wait(file_locks: FileLocks) -> None:
    async with file_locks.hold("one"), file_locks.hold("two") as lease:
        assert lease.waited_s == 0.0


async def test_file_lock_waits_for_another_process(file_locks: FileLocks) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER_SNIPPET,
        str(file_locks.path("abc")),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        async with asyncio.timeout(BOUND_S):
            assert await holder.stdout.readline() == b"locked\n"
            entered, leave = asyncio.Event(), asyncio.Event()
            waiter = asyncio.create_task(hold_until(file_locks, "abc", entered, leave))
            assert await stays_unset(entered)
            holder.stdin.write(b"release\n")
            await holder.stdin.drain()
            await entered.wait()
            leave.set()
            lease = await waiter
            assert await holder.wait() == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert lease.waited_s >= STAYS_OUT_S


async def test_file_lock_keeps_another_process_out(file_locks: FileLocks) -> None:
    async with file_locks.hold("abc"):
        assert await run_probe(file_locks.path("abc")) == 1
    assert await run_probe(file_locks.path("abc")) == 0


async def test_file_lock_released_when_body_raises(tmp_path: Path, file_locks: FileLocks) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with file_locks.hold("abc"):
            raise RuntimeError("boom")
    other = FileLocks(tmp_path)
    try:
        async with asyncio.timeout(BOUND_S), other.hold("abc") as lease:
            assert lease.waited_s == 0.0
    finally:
        await other.aclose()


async def test_file_lock_released_when_holder_cancelled(
    tmp_path: Path, file_locks: FileLocks
) -> None:
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_until(file_locks, "abc", entered, asyncio.Event()))
    await entered.wait()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    other = FileLocks(tmp_path)
    try:
        async with asyncio.timeout(BOUND_S), other.hold("abc") as lease:
            assert lease.waited_s == 0.0
    finally:
        await other.aclose()
    async with file_locks.hold("abc") as lease:
        assert lease.waited_s == 0.0


async def test_file_lock_cancelled_waiter_leaves_no_trace(file_locks: FileLocks) -> None:
    entered, leave = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(file_locks, "abc", entered, leave))
    await entered.wait()
    waiter = asyncio.create_task(hold_until(file_locks, "abc", asyncio.Event(), asyncio.Event()))
    await asyncio.sleep(STAYS_OUT_S)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    leave.set()
    await holder
    async with asyncio.timeout(BOUND_S), file_locks.hold("abc") as lease:
        assert lease.waited_s == 0.0


async def test_file_locks_unusable_state_dir_raise_lock_error(tmp_path: Path) -> None:
    regular_file = tmp_path / "not-a-dir"
    regular_file.write_text("")
    with pytest.raises(LockError, match="cannot use lock directory") as caught:
        FileLocks(regular_file / "state")
    assert isinstance(caught.value, OrchestratorError)


async def test_file_lock_refuses_token_id_that_is_not_a_file_name(file_locks: FileLocks) -> None:
    with pytest.raises(ValueError, match="cannot name a lock file"):
        async with file_locks.hold("../escape"):
            pass


async def test_file_locks_aclose_drops_the_locks(tmp_path: Path) -> None:
    first, second = FileLocks(tmp_path), FileLocks(tmp_path)
    try:
        async with first.hold("abc"):
            await first.aclose()
            async with asyncio.timeout(BOUND_S), second.hold("abc") as lease:
                assert lease.waited_s == 0.0
    except OSError:
        pytest.fail("releasing after aclose must not fail")  # pragma: no cover
    finally:
        await second.aclose()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_locks_forget_is_harmless() -> None:
    locks = NoLocks()
    locks.forget("abc")
    async with locks.hold("abc") as lease:
        assert lease.waited_s == 0.0


async def test_file_locks_keep_a_descriptor_per_token_until_it_is_forgotten(
    file_locks: FileLocks,
) -> None:
    before = open_descriptors()
    for token_id in ("one", "two", "three"):
        async with file_locks.hold(token_id):
            pass
    assert open_descriptors() == before + 3
    file_locks.forget("two")
    file_locks.forget("never-held")
    assert open_descriptors() == before + 2


async def test_file_lock_forgotten_is_taken_afresh_and_still_excludes(tmp_path: Path) -> None:
    first, second = FileLocks(tmp_path), FileLocks(tmp_path)
    try:
        async with first.hold("abc"):
            pass
        first.forget("abc")
        await assert_excludes(first, second, "abc")
        await assert_excludes(second, first, "abc")
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize("queued", [False, True], ids=["held", "held and queued"])
async def test_file_lock_forget_while_held_changes_nothing(
    tmp_path: Path, file_locks: FileLocks, queued: bool
) -> None:
    entered, leave = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(file_locks, "abc", entered, leave))
    await entered.wait()
    if queued:  # a second hold through the same object waits behind the first
        waiter_in, waiter_leave = asyncio.Event(), asyncio.Event()
        waiter = asyncio.create_task(hold_until(file_locks, "abc", waiter_in, waiter_leave))
        assert await stays_unset(waiter_in)
    descriptors = open_descriptors()
    file_locks.forget("abc")
    assert open_descriptors() == descriptors
    assert await run_probe(file_locks.path("abc")) == 1  # still held against other processes
    leave.set()
    await holder
    if queued:
        await asyncio.wait_for(waiter_in.wait(), BOUND_S)
        assert await run_probe(file_locks.path("abc")) == 1
        waiter_leave.set()
        await waiter
    file_locks.forget("abc")
    assert open_descriptors() == descriptors - 1
    assert await run_probe(file_locks.path("abc")) == 0


# --- RunLock --------------------------------------------------------------------------


async def test_a_run_lock_excludes_other_processes_and_is_removed_on_release(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs" / "r1.lock"
    lock = RunLock.take(tmp_path, "r1")
    assert lock is not None
    assert RunLock.take(tmp_path, "r1") is None  # another open file description
    assert await run_probe(path) == 1
    lock.release()
    lock.release()
    assert not path.exists()
    again = RunLock.take(tmp_path, "r1")
    assert again is not None
    again.release()


def test_a_run_lock_whose_file_was_removed_after_it_was_opened_is_taken_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race release() opens: we open the file, its holder removes it and lets go,
    # we lock the removed file. That lock must not count: the next taker would create
    # a new file and lock it too.
    holder = RunLock.take(tmp_path, "r1")
    assert holder is not None
    real_open = os.open
    opened: list[int] = []

    def open_then_release(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        if not opened:
            holder.release()
        opened.append(fd)
        return fd

    monkeypatch.setattr(os, "open", open_then_release)
    lock = RunLock.take(tmp_path, "r1")
    monkeypatch.undo()
    assert lock is not None
    assert len(opened) == 2  # the removed file, then the one the path names now
    path = tmp_path / "runs" / "r1.lock"
    assert os.fstat(opened[1]).st_ino == path.stat().st_ino
    assert RunLock.take(tmp_path, "r1") is None
    lock.release()
    assert not path.exists()


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
        locks = await RedisLocks.connect(server.url, ttl_s=0.3)
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
        await RedisLocks.connect(url)
    assert time.monotonic() - started < 2.0


async def assert_password_hidden(port: int) -> None:
    """Connecting with a password to ``port`` fails without showing the password."""
    url = f"redis://ops:s3cret-pw@127.0.0.1:{port}/0"
    with pytest.raises(LockError) as caught:
        await RedisLocks.connect(url)
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
        await RedisLocks.connect("http://user:pw@example.invalid/")


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
