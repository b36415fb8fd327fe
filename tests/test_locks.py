"""Token locks against the real things: flock between processes, and a live redis-server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, redis_url, start_redis_server  # noqa: F401

from orchestrator.errors import OrchestratorError
from orchestrator.state import locks as locks_module
from orchestrator.state.locks import (
    FileLocks,
    Lease,
    LockError,
    NoLocks,
    RunLock,
    TokenLocks,
    open_token_locks,
)
from orchestrator.state.redis_locks import EPOCH_KEY, RedisLocks, describe_lock_url

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
        assert (await two).waited_s > 0  # under load, when it started waiting can lag


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


async def test_a_lock_file_that_cannot_be_opened_is_a_lock_error_naming_it(
    file_locks: FileLocks,
) -> None:
    file_locks.path("abc").mkdir()  # something else took the name
    with pytest.raises(LockError, match=f"cannot open lock file {file_locks.path('abc')}: "):
        async with file_locks.hold("abc"):
            pytest.fail("held a lock it could not open")  # pragma: no cover


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


async def test_file_locks_keep_no_descriptor_and_no_file_once_a_hold_is_over(
    file_locks: FileLocks, tmp_path: Path
) -> None:
    before = open_descriptors()
    for token_id in ("one", "two", "three"):
        async with file_locks.hold(token_id):
            assert open_descriptors() == before + 1
    assert open_descriptors() == before
    # A state directory used for years keeps no file per token ever used.
    assert list((tmp_path / "locks").iterdir()) == []


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


# --- Lock files deleted while held (issue 16, item 2) ----------------------------------


def record_failed_tries(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set each time a FileLocks hold finds its file locked by someone else."""
    failed = asyncio.Event()
    real = locks_module._try_flock

    def try_flock(fd: int, path: Path) -> bool:
        taken = real(fd, path)
        if not taken:
            failed.set()
        return taken

    monkeypatch.setattr(locks_module, "_try_flock", try_flock)
    return failed


async def first_of(task: asyncio.Task[Lease], event: asyncio.Event) -> None:
    """Wait until ``task`` ends or ``event`` is set, whichever comes first (bounded)."""
    signal = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((task, signal), timeout=BOUND_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signal.cancel()
    assert task.done() or event.is_set(), "neither happened in time"


async def test_a_lock_file_deleted_while_held_is_taken_again_before_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator cleans up locks/ while run A holds a token; run B starts with the
    # same state directory and takes the token afresh. A's next call must wait for B's.
    run_a, run_b = FileLocks(tmp_path), FileLocks(tmp_path)
    failed = record_failed_tries(monkeypatch)
    try:
        async with run_a.hold("abc"):
            shutil.rmtree(tmp_path / "locks")
            (tmp_path / "locks").mkdir()
            b_in, b_leave = asyncio.Event(), asyncio.Event()
            b_holds = asyncio.create_task(hold_until(run_b, "abc", b_in, b_leave))
            await asyncio.wait_for(b_in.wait(), BOUND_S)  # the deleted file excludes nobody
        a_in, a_leave = asyncio.Event(), asyncio.Event()
        a_again = asyncio.create_task(hold_until(run_a, "abc", a_in, a_leave))
        await first_of(a_again, failed)
        assert not a_in.is_set(), "run A took the token while run B held it"
        b_leave.set()
        await b_holds
        await asyncio.wait_for(a_in.wait(), BOUND_S)
        a_leave.set()
        assert (await a_again).waited_s > 0
    finally:
        await run_a.aclose()
        await run_b.aclose()


async def test_a_waiter_that_locked_a_deleted_file_takes_the_one_its_path_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # C opened the file and waits for A; the file is deleted and B takes a new one.
    # When A lets go, C holds a file nobody else looks at: it must go for B's.
    run_a, run_b, run_c = FileLocks(tmp_path), FileLocks(tmp_path), FileLocks(tmp_path)
    failed = record_failed_tries(monkeypatch)
    try:
        a_in, a_leave = asyncio.Event(), asyncio.Event()
        a_holds = asyncio.create_task(hold_until(run_a, "abc", a_in, a_leave))
        await asyncio.wait_for(a_in.wait(), BOUND_S)
        c_in, c_leave = asyncio.Event(), asyncio.Event()
        c_waits = asyncio.create_task(hold_until(run_c, "abc", c_in, c_leave))
        await asyncio.wait_for(failed.wait(), BOUND_S)  # C has the old file open, waiting
        (tmp_path / "locks" / "abc.lock").unlink()
        b_in, b_leave = asyncio.Event(), asyncio.Event()
        b_holds = asyncio.create_task(hold_until(run_b, "abc", b_in, b_leave))
        await asyncio.wait_for(b_in.wait(), BOUND_S)
        failed.clear()
        a_leave.set()
        await a_holds
        await first_of(c_waits, failed)  # C either got in (wrong) or found B's file held
        assert not c_in.is_set(), "run C took the token while run B held it"
        b_leave.set()
        await b_holds
        await asyncio.wait_for(c_in.wait(), BOUND_S)
        c_leave.set()
        await c_waits
    finally:
        for locks in (run_a, run_b, run_c):
            await locks.aclose()


async def test_releasing_a_deleted_lock_file_leaves_the_new_holders_file_alone(
    tmp_path: Path,
) -> None:
    run_a, run_b = FileLocks(tmp_path), FileLocks(tmp_path)
    try:
        async with run_a.hold("abc"):
            (tmp_path / "locks" / "abc.lock").unlink()
            b_in, b_leave = asyncio.Event(), asyncio.Event()
            b_holds = asyncio.create_task(hold_until(run_b, "abc", b_in, b_leave))
            await asyncio.wait_for(b_in.wait(), BOUND_S)
        # A's release must not remove B's file: a third process would create another
        # and lock it while B still calls.
        assert run_b.path("abc").exists()
        assert await run_probe(run_b.path("abc")) == 1
        b_leave.set()
        await b_holds
        assert not run_b.path("abc").exists()
    finally:
        await run_a.aclose()
        await run_b.aclose()


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
        assert await lease.confirm()
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
            assert await lease_b.confirm()
            # A holder re-checks right before each call: A's lease is gone.
            assert not await lease_a.confirm()
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
            assert await lease.confirm()
            await client.flushall()
            assert not await lease.confirm()
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
        assert not await lease.confirm()


# --- redis, an optional extra ----------------------------------------------------------


async def test_a_lock_url_without_the_redis_package_is_a_clear_lock_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "orchestrator.state.redis_locks")
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(LockError, match=r"pip install 'orchestrator\[redis\]'"):
        await open_token_locks(tmp_path, "redis://127.0.0.1:1/0", fence_s=0, warn=print)


def test_a_run_without_a_lock_url_never_imports_redis() -> None:
    code = (
        "import sys, orchestrator.cli, orchestrator.run.prepare, orchestrator.run.execute;"
        "sys.exit('redis' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


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
