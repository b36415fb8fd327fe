"""What the lock tests share: holding a lock until told, and bounded waits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from orchestrator.state.locks import Lease, TokenLocks

#: Upper bound on anything a test waits for; reached only when the code is broken.
BOUND_S = 5.0
#: How long a waiter must stay out to count as "kept waiting".
STAYS_OUT_S = 0.05


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


def closed_port() -> int:
    """A loopback port nothing listens on (just freed by us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
