"""File locks against the real thing: flock between processes, files deleted mid-run."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lock_helpers import (
    BOUND_S,
    STAYS_OUT_S,
    assert_excludes,
    hold_until,
    stays_unset,
)

from orchestrator.errors import OrchestratorError
from orchestrator.state import locks as locks_module
from orchestrator.state.locks import (
    FileLocks,
    Lease,
    LockError,
    NoLocks,
    RunLock,
)

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
async def file_locks(tmp_path: Path) -> AsyncIterator[FileLocks]:
    locks = FileLocks(tmp_path)
    yield locks
    await locks.aclose()


async def run_probe(path: Path) -> int:
    """Exit status of another process trying the lock file: 0 took it, 1 held elsewhere."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE_SNIPPET, str(path))
    async with asyncio.timeout(BOUND_S):
        return await process.wait()


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


async def test_file_locks_keep_no_descriptor_and_no_file_once_a_token_is_forgotten(
    file_locks: FileLocks, tmp_path: Path
) -> None:
    before = open_descriptors()
    for token_id in ("one", "two", "three"):
        async with file_locks.hold(token_id):
            assert open_descriptors() == before + 1
        file_locks.forget(token_id)
    assert open_descriptors() == before
    # A state directory used for years keeps no file per token ever used.
    assert list((tmp_path / "locks").iterdir()) == []


async def test_consecutive_holds_reuse_one_open_lock_file(
    file_locks: FileLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = file_locks.path("abc")
    opened: list[str] = []
    real_open = os.open

    def counting_open(file: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        opened.append(os.fspath(file))
        return real_open(file, flags, mode)

    monkeypatch.setattr(locks_module.os, "open", counting_open)
    before = open_descriptors()
    inodes = []
    for _ in range(3):  # a lane's calls, one hold each
        async with file_locks.hold("abc") as lease:
            assert await lease.confirm(busy_s=60.0)
            inodes.append(path.stat().st_ino)
            await lease.idle()
        assert open_descriptors() == before + 1  # kept open, unlocked, between calls
    assert opened == [os.fspath(path)]
    assert len(set(inodes)) == 1
    assert await run_probe(path) == 0  # unlocked between holds


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
        # A's lane end must not remove B's file: a third process would create another
        # and lock it while B still calls.
        run_a.forget("abc")
        assert run_b.path("abc").exists()
        assert await run_probe(run_b.path("abc")) == 1
        b_leave.set()
        await b_holds
        run_b.forget("abc")
        assert not run_b.path("abc").exists()
    finally:
        await run_a.aclose()
        await run_b.aclose()


def test_a_run_without_a_lock_url_never_imports_redis() -> None:
    code = (
        "import sys, orchestrator.cli, orchestrator.run.prepare, orchestrator.run.execute;"
        "sys.exit('redis' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
