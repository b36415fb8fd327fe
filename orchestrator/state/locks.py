"""Token locks: at most one call per token, across processes and hosts.

wolkvox refuses two simultaneous calls on one token. The scheduler already
keeps calls on a token apart inside one process; the locks here extend that
to other processes on the same host (:class:`FileLocks`, an OS file lock per
token) and to other hosts (:class:`RedisLocks`, a renewed lease in Redis).

The scheduler wraps every call in ``async with locks.hold(token_id) as lease``.
It reports waiting from ``lease.waited_s`` and stops the lane when
``lease.lost`` is set, so this module logs nothing itself. When a token's lane
has ended it calls ``locks.forget(token_id)``, so what a lock keeps between
calls (a lock file's descriptor) is held for the lanes running, not for every
token of the plan.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, unquote, urlencode

if TYPE_CHECKING:  # redis is imported only by runs that use it: start-up time counts
    import redis.asyncio as aioredis

from orchestrator.errors import LockError

__all__ = [
    "FileLocks",
    "Lease",
    "LockError",
    "NoLocks",
    "RedisLocks",
    "TokenLocks",
    "describe_lock_url",
]

#: Polling while another holder has the lock: start short so a hand-over is
#: quick, grow so a long wait costs little.
_FIRST_POLL_S = 0.005
_MAX_POLL_S = 0.1

#: Longest a single Redis command may take before we treat Redis as unreachable.
_MAX_REDIS_OP_S = 5.0

#: Token ids name lock files, so they must be one plain path component.
_SAFE_TOKEN_ID = re.compile(r"[A-Za-z0-9_.:-]+")

_KEY_PREFIX = "orchestrator:token-lock:"

# Compare-then-act in one atomic script: a lease that expired and was taken by
# another owner is never extended or deleted by its former holder.
_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


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
    lost: bool = False


class TokenLocks(Protocol):
    """What the scheduler needs from a lock backend."""

    def hold(self, token_id: str) -> AbstractAsyncContextManager[Lease]:
        """Wait until this process holds ``token_id``'s lock; release it on exit."""
        ...

    def forget(self, token_id: str) -> None:
        """Free what is kept for ``token_id`` between holds; a later hold takes it afresh.

        Called once its holds are over (its lane has ended): a plan of thousands of
        tokens must not keep a descriptor open for each. Does nothing while a hold
        of ``token_id`` is active or queued.
        """
        ...

    async def aclose(self) -> None:
        """Free every resource; call once no hold is active."""
        ...


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
class _Slot:
    """Per-token state of one lock object."""

    #: The token's open lock file (FileLocks only).
    fd: int = -1
    #: Serialises holds through this object: neither flock on one descriptor nor
    #: Redis can tell two of our own holds apart.
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Holds in progress here, holding or queued: a newcomer that sees any waits.
    users: int = 0


class FileLocks:
    """One host: an exclusive ``flock`` on ``state_dir/locks/<token_id>.lock``.

    Each token's file is opened at its first hold and kept open until
    :meth:`forget` (or :meth:`aclose`), so a free hold costs two ``flock`` system
    calls, and a run keeps one descriptor per lane running, not per token.
    ``flock`` locks belong to the open file description: another process, or
    another :class:`FileLocks` in this one, is excluded by the kernel; an
    ``asyncio.Lock`` per token excludes concurrent holds through this same
    object. The kernel drops the lock when a process dies, so a crash never
    leaves a token locked.

    While someone else holds the lock we poll with a non-blocking ``flock`` and
    a growing sleep (5 ms to 100 ms) rather than block in a thread: a thread
    stuck in ``flock`` cannot be cancelled, so a cancelled waiter would later
    take the lock with nobody left to release it, and every waiter would occupy
    an executor thread that DNS lookups also need. Polling adds at most 100 ms
    to a hand-over, small next to a call and the cooldown after it.
    """

    def __init__(self, state_dir: Path) -> None:
        """Create ``state_dir/locks``; raise :class:`LockError` if it is unusable."""
        self._dir = state_dir / "locks"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            # Prove now that lock files can be created, rather than fail mid-run.
            probe = self._dir / f".probe-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            probe.unlink()
        except OSError as exc:
            raise LockError(f"cannot use lock directory {self._dir}: {_os_reason(exc)}") from exc
        self._prefix = os.path.join(self._dir, "")
        self._slots: dict[str, _Slot] = {}

    def path(self, token_id: str) -> Path:
        """The lock file of ``token_id``."""
        return Path(self._path(token_id))

    def _path(self, token_id: str) -> str:
        # A string, not a Path: every lane opens one, before its first request.
        return f"{self._prefix}{_checked_token_id(token_id)}.lock"

    def hold(self, token_id: str) -> AbstractAsyncContextManager[Lease]:
        """Wait for ``token_id``'s lock, yield the lease, release it on any exit."""
        return _FileHold(self, token_id)

    async def _acquire(self, token_id: str) -> tuple[_Slot, Lease]:
        slot = self._slots.get(token_id) or self._open(token_id)
        started = time.monotonic()
        contended = slot.users > 0
        slot.users += 1
        try:
            await slot.guard.acquire()
            try:
                if not self._try_flock(slot.fd, token_id):  # held by another process
                    await self._wait_for_flock(slot.fd, token_id)
                    contended = True
            except BaseException:
                slot.guard.release()
                raise
        except BaseException:
            slot.users -= 1
            raise
        return slot, Lease(token_id, time.monotonic() - started if contended else 0.0)

    @staticmethod
    def _release(slot: _Slot) -> None:
        try:
            fcntl.flock(slot.fd, fcntl.LOCK_UN)
        finally:
            slot.guard.release()
            slot.users -= 1

    def forget(self, token_id: str) -> None:
        """Close ``token_id``'s lock file, unless a hold of it is active or queued."""
        slot = self._slots.get(token_id)
        if slot is not None and slot.users == 0:
            del self._slots[token_id]
            os.close(slot.fd)

    async def aclose(self) -> None:
        """Close every lock file, which also drops any lock still held."""
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            os.close(slot.fd)

    def _open(self, token_id: str) -> _Slot:
        slot = self._slots[token_id] = _Slot(_open_lock_file(self._path(token_id)))
        return slot

    async def _wait_for_flock(self, fd: int, token_id: str) -> None:
        """Poll until the exclusive lock on ``fd``, held elsewhere, is ours."""
        delay = _FIRST_POLL_S
        while True:
            await asyncio.sleep(delay)
            if self._try_flock(fd, token_id):
                return
            delay = min(delay * 2, _MAX_POLL_S)

    def _try_flock(self, fd: int, token_id: str) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise LockError(f"cannot lock {self.path(token_id)}: {_os_reason(exc)}") from exc
        return True


class _FileHold:
    """One ``async with FileLocks.hold(...)``: a plain class, as every call takes one."""

    __slots__ = ("_locks", "_slot", "_token_id")

    def __init__(self, locks: FileLocks, token_id: str) -> None:
        self._locks = locks
        self._token_id = token_id
        self._slot: _Slot | None = None

    async def __aenter__(self) -> Lease:
        self._slot, lease = await self._locks._acquire(self._token_id)
        return lease

    async def __aexit__(self, *exc_info: object) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            FileLocks._release(slot)


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
        path = folder / f"{_checked_token_id(run_id)}.lock"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(f"cannot open lock file {path}: {_os_reason(exc)}") from exc
        while True:
            fd = _open_lock_file(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            try:
                if _still_named(fd, path):
                    return cls(fd, path)
            except OSError as exc:
                os.close(fd)
                raise LockError(f"cannot check lock file {path}: {_os_reason(exc)}") from exc
            # Its holder removed the file after we opened it: locking that file says
            # nothing about the run. Take the file the path names now.
            os.close(fd)

    def release(self) -> None:
        """Let the run be resumed by another process; remove the lock file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            # Removed while still locked: whoever opened it meanwhile sees it is gone.
            with suppress(FileNotFoundError):
                self._path.unlink()
            os.close(fd)


def _open_lock_file(path: str | Path) -> int:
    """Open (creating) a lock file; raise :class:`LockError` when it cannot be."""
    try:
        # Read-only is enough for flock and lets another user's run share a file it
        # did not create. CLOEXEC: a child inheriting the descriptor would share our lock.
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open lock file {path}: {_os_reason(exc)}") from exc


def _still_named(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open on ``fd``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class RedisLocks:
    """Many hosts: a lease per token in Redis, renewed while held.

    Acquire is ``SET key owner NX PX ttl``, polled with a growing sleep while
    another owner has it. While held, a background task extends the lease every
    ``ttl/3``, only if it is still ours; release deletes it only if it is still
    ours. When a renewal finds the lease gone or taken, or cannot get an answer
    before the lease may have expired, ``lease.lost`` is set. If Redis stays
    unreachable for longer than ``ttl_s`` while waiting to acquire,
    :class:`LockError` is raised rather than wait blind.
    """

    def __init__(self, client: aioredis.Redis, url: str, ttl_s: float) -> None:
        """Wrap a connected client; use :meth:`connect` instead."""
        self._client = client
        self._url = url
        self._where = describe_lock_url(url)
        self._ttl_s = ttl_s
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._slots: dict[str, _Slot] = {}
        # Each hold appends a fresh nonce, so no two holds ever share an owner value;
        # host and pid make `redis-cli GET` tell an operator who holds a token.
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}:"

    @classmethod
    async def connect(cls, url: str, *, ttl_s: float = 30.0) -> RedisLocks:
        """Connect to ``url`` and PING it; raise :class:`LockError` when that fails."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        where = describe_lock_url(url)
        # A renewal must be able to fail and be retried well within one ttl.
        op_timeout = min(_MAX_REDIS_OP_S, ttl_s / 3)
        try:
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
                # Our own loops decide when to try again and when a lease is lost.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise LockError(f"invalid Redis URL {where}: {_scrub(str(exc), url)}") from exc
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise LockError(f"cannot reach Redis at {where}: {_scrub(str(exc), url)}") from exc
        return cls(client, url, ttl_s)

    @asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        """Wait for ``token_id``'s lease, yield it, keep it renewed, release it on exit."""
        slot = self._slots.get(token_id)
        if slot is None:
            slot = self._slots[token_id] = _Slot()
        key = _KEY_PREFIX + token_id
        owner = self._owner_prefix + secrets.token_hex(8)
        started = time.monotonic()
        contended = slot.users > 0
        slot.users += 1
        try:
            async with slot.guard:
                valid_until, waited = await self._acquire(token_id, key, owner)
                contended = waited or contended
                lease = Lease(token_id, time.monotonic() - started if contended else 0.0)
                keeper = asyncio.create_task(self._keep(lease, key, owner, valid_until))
                try:
                    yield lease
                finally:
                    # Cancelled before our release, it can no longer flag a lease we gave up.
                    keeper.cancel()
                    await self._release(key, owner)
                    await asyncio.wait((keeper,))
        finally:
            slot.users -= 1

    def forget(self, token_id: str) -> None:
        """Drop ``token_id``'s bookkeeping, unless a hold of it is active or queued."""
        slot = self._slots.get(token_id)
        if slot is not None and slot.users == 0:
            del self._slots[token_id]

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self._client.aclose()

    async def _acquire(self, token_id: str, key: str, owner: str) -> tuple[float, bool]:
        """Take the lease; return until when it is surely ours, and whether we waited."""
        from redis.exceptions import RedisError

        delay = _FIRST_POLL_S
        unreachable_since: float | None = None
        waited = False
        try:
            while True:
                sent = time.monotonic()
                try:
                    taken = await self._client.set(key, owner, nx=True, px=self._ttl_ms)
                except (RedisError, OSError) as exc:
                    if unreachable_since is None:
                        unreachable_since = sent
                    if time.monotonic() - unreachable_since > self._ttl_s:
                        raise LockError(
                            f"lost contact with Redis at {self._where} while waiting for "
                            f"token {token_id}: {_scrub(str(exc), self._url)}"
                        ) from exc
                else:
                    unreachable_since = None
                    if taken:
                        # Counted from sending: Redis cannot have started the ttl earlier.
                        return sent + self._ttl_s, waited
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_POLL_S)
        except asyncio.CancelledError:
            # A SET cut mid-flight may have succeeded: give the lease back rather than
            # leave other hosts waiting for it to expire.
            await self._release(key, owner)
            raise

    async def _keep(self, lease: Lease, key: str, owner: str, valid_until: float) -> None:
        """Renew the lease every ttl/3 until cancelled; flag it lost when that fails."""
        from redis.exceptions import RedisError

        delay = self._ttl_s / 3
        while True:
            await asyncio.sleep(delay)
            sent = time.monotonic()
            try:
                # A renewal that cannot answer before the lease may expire is no renewal.
                async with asyncio.timeout(max(0.0, valid_until - sent)):
                    kept = await self._client.eval(_RENEW_LUA, 1, key, owner, self._ttl_ms)
            except (RedisError, OSError, TimeoutError):
                if time.monotonic() >= valid_until:
                    lease.lost = True
                    return
                # Redis blinked: try again soon, while the lease still stands.
                delay = min(self._ttl_s / 10, max(0.0, valid_until - time.monotonic()))
                continue
            if not kept:
                lease.lost = True
                return
            valid_until = sent + self._ttl_s
            delay = self._ttl_s / 3

    async def _release(self, key: str, owner: str) -> None:
        """Delete the lease if it is still ours; a failure only leaves it to expire."""
        from redis.exceptions import RedisError

        with suppress(RedisError, OSError):
            await self._client.eval(_RELEASE_LUA, 1, key, owner)


def describe_lock_url(url: str) -> str:
    """``url`` with any password (in the userinfo or the query) replaced by ``***``."""
    head, userinfo, rest = _split_userinfo(url)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        # A lone userinfo (`redis://secret@host`) is often meant as a password: hide it too.
        rest = f"{user}:***@{rest}" if colon and user else f"***@{rest}"
    base, qmark, query = rest.partition("?")
    query, hash_mark, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_is_password_field(name) for name, _ in pairs):
        query = urlencode([(n, "***" if _is_password_field(n) else v) for n, v in pairs], safe="*")
    return f"{head}{base}{qmark}{query}{hash_mark}{fragment}"


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """Split ``url`` into ``scheme://``, the userinfo (or None) and the rest.

    Done by hand rather than with ``urlsplit``: an unescaped ``#``, ``?`` or ``/``
    in a password makes ``urlsplit`` cut the netloc short and show part of it.
    Splitting at the last ``@`` errs towards hiding too much, never too little.
    """
    scheme, sep, rest = url.partition("://")
    head = scheme + sep if sep else ""
    rest = rest if sep else url
    if "@" not in rest:
        return head, None, rest
    userinfo, _, hostpart = rest.rpartition("@")
    return head, userinfo, hostpart


def _is_password_field(name: str) -> bool:
    return name.lower() == "password"


def _scrub(text: str, url: str) -> str:
    """Remove the URL's secrets from a library message, in case it quotes them."""
    _, userinfo, rest = _split_userinfo(url)
    user, colon, password = (userinfo or "").partition(":")
    found = [unquote(password if colon else user)]
    query = rest.partition("?")[2].partition("#")[0]
    found += [v for n, v in parse_qsl(query) if _is_password_field(n)]
    for secret in sorted(filter(None, found), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _checked_token_id(token_id: str) -> str:
    if not _SAFE_TOKEN_ID.fullmatch(token_id) or token_id in {".", ".."}:
        raise ValueError(f"token_id {token_id!r} cannot name a lock file")
    return token_id


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
