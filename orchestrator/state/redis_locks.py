"""Token locks across hosts: a lease per token in Redis, renewed while held, fenced by an epoch.

Imported only when a ``lock_url`` is set: redis is an optional extra
(``pip install 'orchestrator[redis]'``).

A lease is ``SET key owner NX PX ttl``. A lease only keeps other hosts off a token
while Redis keeps it: a Redis restarted without its data forgets every lease, and
the next process would take a token whose call is still running. So the leases go
with an *epoch*: a random value under :data:`EPOCH_KEY` that every holder expects,
checked in the same script that takes a lease and again right before each call.
A process that finds the epoch missing or changed cannot prove that no call from
before is still running: it keeps off every token for ``fence_s`` (the plan's
``timeout_s`` plus ``cooldown_s``, the longest such a call can keep a token busy),
and writes a fence key that expires then, so processes that start meanwhile wait
out the rest of it too.

A call outlives a lease given up by a holder killed or cut mid-call, so right
before each call the holder also sets a busy key for the token, expiring in
Redis when the call's ``timeout_s`` plus ``cooldown_s`` have passed, in the same
script that checks the lease; a holder that knows its call's outcome deletes it.
Taking a lease reads what is left of it, for the new holder to wait out.

Why not redis-py's ``Lock``: it takes a lease with a plain ``SET NX``, so it cannot
check the epoch in the same step (a lease taken in a Redis that lost its data looks
like any other), and its blocking acquire gives up on the first connection error,
where a lane should ride out a short blink and fail only after a ttl.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from urllib.parse import parse_qsl, unquote, urlencode

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from orchestrator.errors import LockError
from orchestrator.state.locks import FIRST_POLL_S, MAX_POLL_S, Lease, Slot

__all__ = ["BUSY_PREFIX", "EPOCH_KEY", "FENCE_KEY", "KEY_PREFIX", "RedisLocks", "describe_lock_url"]

KEY_PREFIX = "orchestrator:token-lock:"
#: Present (with an expiry) while a call on the token may still run at wolkvox.
BUSY_PREFIX = "orchestrator:token-busy:"
#: Random value written once and kept forever; missing or changed means Redis lost data.
EPOCH_KEY = "orchestrator:lock-epoch"
#: Present (with an expiry) while calls from before a loss of data may still run.
FENCE_KEY = "orchestrator:lock-fence"

#: Longest a single Redis command may take before we treat Redis as unreachable.
_MAX_REDIS_OP_S = 5.0

# Every script compares and acts in one atomic step.
# KEYS: lease, epoch, busy. ARGV: owner, ttl ms, the epoch we hold.
# Returns -1 (the epoch is not ours), 0 (held by another) or 1, and the busy key's ms left.
_ACQUIRE_LUA = """
if redis.call('get', KEYS[2]) ~= ARGV[3] then
    return {-1, 0}
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {1, math.max(redis.call('pttl', KEYS[3]), 0)}
end
return {0, 0}
"""
# KEYS: lease, epoch, busy. ARGV: owner, the epoch we hold, busy ms.
# A busy key that would outlast ours is kept as long.
_CONFIRM_LUA = """
if redis.call('get', KEYS[2]) == ARGV[2] and redis.call('get', KEYS[1]) == ARGV[1] then
    local busy_ms = math.max(tonumber(ARGV[3]), redis.call('pttl', KEYS[3]))
    if busy_ms > 0 then
        redis.call('set', KEYS[3], ARGV[1], 'PX', busy_ms)
    end
    return 1
end
return 0
"""
# KEYS: epoch, fence. ARGV: a fresh epoch, the epoch we held ('' for none), fence ms.
# Returns the epoch to hold and the fence's remaining ms (negative: none).
_ADOPT_LUA = """
local epoch = redis.call('get', KEYS[1])
local lost = false
if not epoch then
    epoch = ARGV[1]
    redis.call('set', KEYS[1], epoch)
    lost = true
elseif ARGV[2] ~= '' and epoch ~= ARGV[2] then
    lost = true
end
local fence_ms = tonumber(ARGV[3])
if lost and fence_ms > 0 and redis.call('pttl', KEYS[2]) < fence_ms then
    redis.call('set', KEYS[2], '1', 'PX', fence_ms)
end
return {epoch, redis.call('pttl', KEYS[2])}
"""
# A lease that expired and was taken by another owner is never extended or deleted
# by its former holder.
_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Used for the lease and for the busy key alike: only their owner deletes them.
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLocks:
    """Many hosts: a lease per token in Redis, renewed while held.

    Acquire takes the lease only under the epoch this process holds, polled with a
    growing sleep while another owner has it. While held, a background task extends
    the lease every ``ttl/3``, only if it is still ours; :meth:`Lease.confirm`
    checks lease and epoch right before a call; release deletes the lease only if
    it is still ours. When a renewal or a confirmation finds the lease gone or
    taken, or cannot get an answer in time, ``lease.lost`` is set. If Redis stays
    unreachable for longer than ``ttl_s`` while waiting to acquire,
    :class:`LockError` is raised rather than wait blind.

    ``clock`` and ``sleep`` time the fence only (tests pass a fake pair).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        *,
        ttl_s: float,
        fence_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wrap a connected client; use :meth:`connect` instead."""
        self._client = client
        self._url = url
        self._where = describe_lock_url(url)
        self._ttl_s = ttl_s
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._fence_ms = round(fence_s * 1000)
        self._clock = clock
        self._sleep = sleep
        self._slots: dict[str, Slot] = {}
        #: The epoch our leases are taken under; None until the first adoption.
        self._epoch: str | None = None
        self._fenced_until = clock()
        self._adopting = asyncio.Lock()
        # Each hold appends a fresh nonce, so no two holds ever share an owner value;
        # host and pid make `redis-cli GET` tell an operator who holds a token.
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}:"

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        fence_s: float,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> RedisLocks:
        """Connect to ``url`` and adopt its epoch; raise :class:`LockError` when that fails.

        When Redis has no epoch, or a fence from another process's finding is still
        up, :attr:`fence_left_s` says how long the first hold will keep off its token.
        """
        if ttl_s <= 0 or fence_s < 0:
            raise ValueError(f"ttl_s must be positive and fence_s not negative: {ttl_s}, {fence_s}")
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
        locks = cls(client, url, ttl_s=ttl_s, fence_s=fence_s, clock=clock, sleep=sleep)
        try:
            await client.ping()
            await locks._adopt(None)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise LockError(f"cannot reach Redis at {where}: {_scrub(str(exc), url)}") from exc
        return locks

    @property
    def fence_left_s(self) -> float:
        """How long from now no call may start, because Redis may have lost leases."""
        return max(0.0, self._fenced_until - self._clock())

    @asynccontextmanager
    async def hold(self, token_id: str) -> AsyncIterator[Lease]:
        """Wait for ``token_id``'s lease, yield it, keep it renewed, release it on exit."""
        slot = self._slots.setdefault(token_id, Slot())
        key, busy = KEY_PREFIX + token_id, BUSY_PREFIX + token_id
        owner = self._owner_prefix + secrets.token_hex(8)
        started = time.monotonic()
        contended = slot.users > 0
        slot.users += 1
        try:
            async with slot.guard:
                valid_until, epoch, waited, busy_ms = await self._acquire(token_id, key, owner)
                contended = waited or contended
                lease = Lease(
                    token_id,
                    time.monotonic() - started if contended else 0.0,
                    busy_left_s=busy_ms / 1000,
                    mark_busy=lambda seconds: self._confirm(key, busy, owner, epoch, seconds),
                    unmark=lambda: self._release(busy, owner),
                )
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

    async def _adopt(self, held: str | None) -> None:
        """Take Redis's epoch in place of ``held``; fence every token when data was lost."""
        async with self._adopting:
            if self._epoch != held:
                return  # another lane of ours adopted the new epoch meanwhile
            epoch, fence_ms = await self._client.eval(
                _ADOPT_LUA,
                2,
                EPOCH_KEY,
                FENCE_KEY,
                secrets.token_hex(16),
                held or "",
                self._fence_ms,
            )
            self._epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
            if fence_ms > 0:
                self._fenced_until = max(self._fenced_until, self._clock() + fence_ms / 1000)

    async def _wait_out_fence(self) -> bool:
        """Sleep until the fence is down; True when there was one."""
        fenced = False
        while (left := self._fenced_until - self._clock()) > 0:
            fenced = True
            await self._sleep(left)
        return fenced

    async def _acquire(self, token_id: str, key: str, owner: str) -> tuple[float, str, bool, int]:
        """Take the lease; return until when it is surely ours, its epoch, whether we waited,
        and the ms left of the token's busy key."""
        delay = FIRST_POLL_S
        unreachable_since: float | None = None
        waited = False
        try:
            while True:
                waited = await self._wait_out_fence() or waited
                epoch = self._epoch
                sent = time.monotonic()
                try:
                    taken, busy_ms = await self._client.eval(
                        _ACQUIRE_LUA,
                        3,
                        key,
                        EPOCH_KEY,
                        BUSY_PREFIX + token_id,
                        owner,
                        self._ttl_ms,
                        epoch or "",
                    )
                    if taken == -1:
                        await self._adopt(epoch)
                        waited = True
                        continue
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
                    if taken == 1 and epoch is not None:
                        # Counted from sending: Redis cannot have started the ttl earlier.
                        return sent + self._ttl_s, epoch, waited, int(busy_ms)
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_POLL_S)
        except asyncio.CancelledError:
            # A script cut mid-flight may have taken the lease: give it back rather than
            # leave other hosts waiting for it to expire.
            await self._release(key, owner)
            raise

    async def _confirm(self, key: str, busy: str, owner: str, epoch: str, busy_s: float) -> bool:
        """True when the lease is still ours under the epoch it was taken in.

        Then the token's busy key is set to expire in ``busy_s``, in the same step.
        """
        busy_ms = max(0, round(busy_s * 1000))
        try:
            async with asyncio.timeout(self._ttl_s / 3):
                confirmed = await self._client.eval(
                    _CONFIRM_LUA, 3, key, EPOCH_KEY, busy, owner, epoch, busy_ms
                )
                return bool(confirmed)
        except (RedisError, OSError, TimeoutError):
            return False  # what cannot be proved is not sent

    async def _keep(self, lease: Lease, key: str, owner: str, valid_until: float) -> None:
        """Renew the lease every ttl/3 until cancelled; flag it lost when that fails."""
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
        """Delete ``key`` (a lease or a busy key) if still ours; a failure leaves it to expire."""
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
