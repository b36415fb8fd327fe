"""Token locks: at most one call per token, across processes and hosts.

wolkvox refuses two simultaneous calls on one token. The scheduler already
keeps calls on a token apart inside one process; the locks here extend that
to other processes on the same host (:class:`FileLocks`, an OS file lock per
token) and to other hosts (``RedisLocks`` in :mod:`orchestrator.state.redis_locks`,
a renewed lease in Redis, imported only when a ``lock_url`` is set).

The scheduler wraps every call in ``async with locks.hold(token_id) as lease``.
It reports waiting from ``lease.waited_s``, rests ``lease.busy_left_s`` before
calling, calls ``await lease.confirm(busy_s=...)`` right before it sends, calls
``await lease.idle()`` once wolkvox surely no longer works on the token, and stops
the lane when ``lease.lost`` is set, so this module logs nothing itself. When a
token's lane has ended it calls ``locks.forget(token_id)``.

Releasing a lock does not end a call: a holder killed, or cut by a second interrupt,
mid-call lets go of the lock while wolkvox may still work on the token. So
``confirm`` also leaves a *busy mark* with the lock (in its file, or a Redis key),
seen by every process using the same locks, saying "busy until now + ``busy_s``"
(the call's ``timeout_s`` plus ``cooldown_s``); ``idle`` lifts it. A mark left
behind is reported to the next holder as ``lease.busy_left_s``.

Why not the ``filelock`` package: its lock cannot notice that its file was
deleted and replaced at the same path (it keeps locking the orphan while a
newcomer locks the new file), and it never removes a lock file safely on release.
Both are what keeps two processes off one token when ``locks/`` is cleaned up.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orchestrator.errors import LockError

__all__ = [
    "FileLocks",
    "Lease",
    "LockError",
    "NoLocks",
    "RunLock",
    "TokenLocks",
    "open_token_locks",
]

#: Polling while another holder has the lock: start short so a hand-over is
#: quick, grow so a long wait costs little.
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.1

#: Token ids name lock files, so they must be one plain path component.
_SAFE_TOKEN_ID = re.compile(r"[A-Za-z0-9_.:-]+")


def boot_clock() -> float:
    """Seconds since boot, suspended time included, the same for every process on the host."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(slots=True)
class Lease:
    """One hold of a token's lock, as seen by the holder.

    ``waited_s`` is how long acquiring took (exactly ``0.0`` when the lock was
    free at once). ``lost`` becomes true while held when the lock can no longer
    be vouched for (a Redis lease that expired, was taken over, or could not be
    renewed in time): another caller may be using the token.
    """

    token_id: str
    waited_s: float
    #: How long a call made under an earlier hold (another process's, one cut or killed
    #: mid-call) may still keep wolkvox busy on the token: rest that long before calling.
    busy_left_s: float = 0.0
    lost: bool = False
    #: Checks that the lease still stands and marks the token busy for the given seconds.
    mark_busy: Callable[[float], Awaitable[bool]] | None = field(
        default=None, compare=False, repr=False
    )
    #: Lifts the busy mark.
    unmark: Callable[[], Awaitable[None]] | None = field(default=None, compare=False, repr=False)

    async def confirm(self, *, busy_s: float) -> bool:
        """Right before a call: True when the lock is still ours; else mark it lost.

        A lease can be lost between acquiring it and sending (Redis restarted empty
        while the journal was written): the call must then not leave. When True, the
        token is marked busy for ``busy_s`` from now for every process using these
        locks, until :meth:`idle`. Raises :class:`LockError` when the mark cannot be made.
        """
        if not self.lost and self.mark_busy is not None and not await self.mark_busy(busy_s):
            self.lost = True
        return not self.lost

    async def idle(self) -> None:
        """The call's outcome is known, or its rest is over: lift the busy mark.

        A mark that cannot be lifted is left to run out: it only makes the next
        holder wait longer than needed.
        """
        if self.unmark is not None:
            await self.unmark()


class TokenLocks(Protocol):
    """What the scheduler needs from a lock backend."""

    def hold(self, token_id: str) -> AbstractAsyncContextManager[Lease]:
        """Wait until this process holds ``token_id``'s lock; release it on exit."""
        ...

    def forget(self, token_id: str) -> None:
        """Free what is kept for ``token_id`` between holds; a later hold takes it afresh.

        Called once its holds are over (its lane has ended): a plan of thousands of
        tokens must not keep state for each. Does nothing while a hold of
        ``token_id`` is active or queued.
        """
        ...

    async def aclose(self) -> None:
        """Free every resource; call once no hold is active."""
        ...


async def open_token_locks(
    state_dir: Path,
    lock_url: str | None,
    *,
    fence_s: float,
    warn: Callable[[str], None],
) -> TokenLocks:
    """Redis leases at ``lock_url`` when it is set, else file locks in ``state_dir``.

    ``fence_s`` is the longest a call can keep a token busy (its ``timeout_s`` plus
    ``cooldown_s``): how long to keep off every token when Redis cannot prove it
    kept the leases of calls that may still run. ``warn`` is told of such a wait.
    Raise :class:`LockError` when the locks cannot be used.
    """
    if not lock_url:
        return FileLocks(state_dir)
    try:
        from orchestrator.state.redis_locks import RedisLocks, describe_lock_url
    except ImportError as exc:
        raise LockError(
            "lock_url is set but the redis package is not installed: "
            "pip install 'orchestrator[redis]'"
        ) from exc
    locks = await RedisLocks.connect(lock_url, fence_s=fence_s)
    if locks.fence_left_s > 0:
        warn(
            f"orchestrator: Redis at {describe_lock_url(lock_url)} cannot prove it kept the "
            f"token leases (new, or restarted without its data): no call for "
            f"{locks.fence_left_s:.0f} s, the longest a call from before could still run"
        )
    return locks


class NoLocks:
    """Locking switched off: every hold succeeds at once."""

    @asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        """Yield a lease that waited for nothing."""
        yield Lease(token_id, 0.0)

    def forget(self, token_id: str) -> None:
        """Nothing is kept."""

    async def aclose(self) -> None:
        """Nothing to free."""


@dataclass(slots=True)
class Slot:
    """Per-token state of one lock object, shared with ``RedisLocks``."""

    #: The token's lock file (FileLocks only), open from the first hold until
    #: ``forget``, else -1.
    fd: int = -1
    #: Serialises holds through this object: neither flock on one descriptor nor
    #: Redis can tell two of our own holds apart.
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Holds in progress here, holding or queued: a newcomer that sees any waits.
    users: int = 0


class FileLocks:
    """One host: an exclusive ``flock`` on ``state_dir/locks/<token_id>.lock``.

    The busy mark is the lock file's content, written, read and lifted (emptied)
    only by the holder of its lock, on the descriptor it holds. It outlives its
    writer's release and death: the kernel keeps what was written, so it is not
    synced to disk (a reboot ends every call anyway). It holds its deadline on
    ``CLOCK_BOOTTIME`` (every process on the host shares it, wall-clock steps do
    not move it, it counts suspended time) and the seconds it was set for: what
    is left is never taken as more than those seconds, so a mark from before a
    reboot (when the clock restarts at 0) waits at most that. The next holder
    empties a mark that has run out.

    A token's file is opened at its first hold and kept open, unlocked between
    holds, until :meth:`forget` (its lane has ended). Each hold locks it and
    checks that the path still names the file it locked: if the file was deleted
    (an operator cleaning ``locks/``, or another process forgetting the token),
    another process may already hold a new file at that path, so the hold opens
    and locks that one instead. :meth:`forget` and :meth:`aclose` remove the file
    while holding it, if the path still names it and it keeps no busy mark still
    running, so ``locks/`` keeps a file only per token in use or left busy by a
    cut or killed call, never one per token ever used.

    ``flock`` locks belong to the open file description: another process, or
    another :class:`FileLocks` in this one, is excluded by the kernel; an
    ``asyncio.Lock`` per token excludes concurrent holds through this same
    object. The kernel drops the lock when a process dies, so a crash never
    leaves a token locked (only its file, which the next holder reuses).

    While someone else holds the lock we poll with a non-blocking ``flock`` and
    a growing sleep (5 ms to 100 ms) rather than block in a thread: a thread
    stuck in ``flock`` cannot be cancelled, so a cancelled waiter would later
    take the lock with nobody left to release it.
    """

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = boot_clock) -> None:
        """Create ``state_dir/locks``; raise :class:`LockError` if it is unusable.

        ``clock`` times the busy marks; every user of ``state_dir`` must share it.
        """
        self._dir = state_dir / "locks"
        self._clock = clock
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            # Prove now that lock files can be created, rather than fail mid-run.
            probe = self._dir / f".probe-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            probe.unlink()
        except OSError as exc:
            raise LockError(f"cannot use lock directory {self._dir}: {_os_reason(exc)}") from exc
        self._slots: dict[str, Slot] = {}

    def path(self, token_id: str) -> Path:
        """The lock file of ``token_id``."""
        return self._dir / f"{checked_token_id(token_id)}.lock"

    @asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        """Wait for ``token_id``'s lock, yield the lease, release it on any exit."""
        path = self.path(token_id)
        slot = self._slots.setdefault(token_id, Slot())
        started = time.monotonic()
        contended = slot.users > 0
        slot.users += 1
        try:
            async with slot.guard:
                contended = await self._lock_named_file(slot, path) or contended
                try:
                    fd = slot.fd
                    yield Lease(
                        token_id,
                        time.monotonic() - started if contended else 0.0,
                        busy_left_s=_busy_left(fd, path, self._clock()),
                        mark_busy=lambda seconds: self._mark_busy(fd, path, seconds),
                        unmark=lambda: _unmark(fd),
                    )
                finally:
                    if slot.fd >= 0:  # aclose() may have closed it already
                        _unlock(slot.fd)
        finally:
            slot.users -= 1

    def forget(self, token_id: str) -> None:
        """Close ``token_id``'s lock file, removed if we may, unless a hold is active or queued."""
        slot = self._slots.get(token_id)
        if slot is not None and slot.users == 0:
            del self._slots[token_id]
            if slot.fd >= 0:
                _remove_and_close(slot.fd, self.path(token_id), self._clock)

    async def aclose(self) -> None:
        """Close every lock file still open, which also drops its lock; remove those we may."""
        slots, self._slots = self._slots, {}
        for token_id, slot in slots.items():
            fd, slot.fd = slot.fd, -1
            if fd >= 0:
                _remove_and_close(fd, self.path(token_id), self._clock)

    async def _mark_busy(self, fd: int, path: Path, seconds: float) -> bool:
        """Mark the token busy for ``seconds``, or longer if a mark says so already."""
        now = self._clock()
        seconds = max(seconds, _busy_left(fd, path, now))
        mark = f"{now + seconds:.3f} {seconds:.3f}\n".encode()
        try:
            # Only the first line is read: a shorter old mark is overwritten whole.
            os.pwrite(fd, mark, 0)
            os.ftruncate(fd, len(mark))
        except OSError as exc:
            raise LockError(f"cannot write busy mark to {path}: {_os_reason(exc)}") from exc
        return True

    async def _lock_named_file(self, slot: Slot, path: Path) -> bool:
        """Lock the file ``path`` names, kept open on ``slot.fd``; return whether we waited."""
        waited = False
        while True:
            if slot.fd < 0:
                slot.fd = _open_lock_file(path)
            try:
                if not _try_flock(slot.fd, path):  # held by another process
                    waited = True
                    await _wait_for_flock(slot.fd, path)
                if _still_named(slot.fd, path):
                    return waited
            except BaseException:
                fd, slot.fd = slot.fd, -1
                os.close(fd)  # drops the lock if it was taken
                raise
            # Locked an orphan (deleted since we opened it): whoever holds the file
            # the path names now would not see us. Take that one instead.
            fd, slot.fd = slot.fd, -1
            os.close(fd)


class RunLock:
    """An OS lock that says "a process is running this run" (``runs/<run_id>.lock``).

    ``--resume`` takes it before continuing a run, so a run still going in another
    process is never continued, and its clears never sent twice. The OS drops it
    when the process dies, however it dies. :meth:`release` removes the file, so a
    state directory does not keep one per run ever made.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self._path = path

    @classmethod
    def take(cls, state_dir: Path, run_id: str) -> RunLock | None:
        """Hold the run's lock, or return ``None`` when another process holds it."""
        folder = state_dir / "runs"
        path = folder / f"{checked_token_id(run_id)}.lock"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(f"cannot open lock file {path}: {_os_reason(exc)}") from exc
        while True:
            fd = _open_lock_file(path, writable=False)
            try:
                if not _try_flock(fd, path):
                    os.close(fd)
                    return None
                if _still_named(fd, path):
                    return cls(fd, path)
            except BaseException:
                os.close(fd)
                raise
            # Its holder removed the file after we opened it: locking that file says
            # nothing about the run. Take the file the path names now.
            os.close(fd)

    def release(self) -> None:
        """Let the run be resumed by another process; remove the lock file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _remove_and_close(fd, self._path)


def _busy_left(fd: int, path: Path, now: float) -> float:
    """Seconds the mark in the lock file on ``fd`` (held) still keeps the token busy.

    A mark that has run out is emptied.
    """
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", errors="replace")
    except OSError as exc:
        raise LockError(f"cannot read busy mark in {path}: {_os_reason(exc)}") from exc
    line = text.partition("\n")[0]
    if not line:
        return 0.0
    try:
        until, seconds = (float(part) for part in line.split())
    except ValueError as exc:
        raise LockError(
            f"busy mark in {path} is unreadable: empty the file once no call on its "
            "token can still run"
        ) from exc
    left = min(until - now, seconds)
    if left > 0:
        return left
    with suppress(OSError):  # a mark run out that stays only costs a read
        os.ftruncate(fd, 0)
    return 0.0


async def _unmark(fd: int) -> None:
    with suppress(OSError):  # left behind, it runs out on its own
        os.ftruncate(fd, 0)


def _unlock(fd: int) -> None:
    with suppress(OSError):  # closing the file drops the lock at the latest
        fcntl.flock(fd, fcntl.LOCK_UN)


async def _wait_for_flock(fd: int, path: Path) -> None:
    """Poll until the exclusive lock on ``fd``, held elsewhere, is ours."""
    delay = FIRST_POLL_S
    while True:
        await asyncio.sleep(delay)
        if _try_flock(fd, path):
            return
        delay = min(delay * 2, MAX_POLL_S)


def _try_flock(fd: int, path: Path) -> bool:
    """Take the exclusive lock on ``fd`` if it is free; True when taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise LockError(f"cannot lock {path}: {_os_reason(exc)}") from exc
    return True


def _open_lock_file(path: Path, *, writable: bool = True) -> int:
    """Open (creating) a lock file; raise :class:`LockError` when it cannot be."""
    # A token's lock file holds its busy mark, so it is opened for writing; a run's
    # needs only flock. CLOEXEC: a child inheriting the descriptor would share our lock.
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open lock file {path}: {_os_reason(exc)}") from exc


def _still_named(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open on ``fd``."""
    try:
        named = path.stat()
        opened = os.fstat(fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise LockError(f"cannot check lock file {path}: {_os_reason(exc)}") from exc
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _remove_and_close(fd: int, path: Path, clock: Callable[[], float] | None = None) -> None:
    """Remove the lock file open on ``fd`` if we hold it and ``path`` still names it; close it.

    With ``clock``, ``fd`` may be unlocked: it is locked first, and neither a file
    another process holds nor one keeping a busy mark still running is removed.
    Removed while still locked: whoever opened it meanwhile locks it only after we
    close, and then sees that the path no longer names it. A file the path does not
    name is someone else's (``locks/`` was cleaned up and another process took the
    token afresh): it is left alone.
    """
    try:
        with suppress(OSError, LockError):  # a file left behind costs only its name
            if clock is not None and (
                not _try_flock(fd, path) or _busy_left(fd, path, clock()) > 0
            ):
                return
            if _still_named(fd, path):
                path.unlink()
    finally:
        os.close(fd)


def checked_token_id(token_id: str) -> str:
    """``token_id`` when it can name a file; raise :class:`ValueError` when not."""
    if not _SAFE_TOKEN_ID.fullmatch(token_id) or token_id in {".", ".."}:
        raise ValueError(f"token_id {token_id!r} cannot name a lock file")
    return token_id


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
