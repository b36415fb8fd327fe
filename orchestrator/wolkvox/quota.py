"""``--check-quota``: does every token have the calls left today that its lane may need?

Before anything is cleared, each lane's token is asked for its daily quota with
wolkvox's ``token_info`` API (one call, which itself counts against the quota),
and the answer is set against the lane's worst case: every clear sent once plus
every retry it may make, ``sum(1 + clear.retries)``. A run that could run out
of calls half-way (leaving some campaigns cleared and others not) is better
refused before it starts.

One ``token_info`` call per lane, on the server of the lane's first clear (the
quota belongs to the token, whichever server answers). Lanes are checked side
by side; each lane is one token, so no token ever has two calls at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import TokenInfoError
from orchestrator.plan.model import Lane
from orchestrator.state.locks import NoLocks, TokenLocks
from orchestrator.wolkvox.client import TokenInfo, WolkvoxClient

__all__ = ["QuotaLine", "check_quota", "render_quota", "worst_case"]

#: How long one ``token_info`` call may take, in seconds.
DEFAULT_TIMEOUT_S = 30.0

#: How many ``token_info`` calls are in flight at once, across lanes.
DEFAULT_MAX_PARALLEL = 32


@dataclass(frozen=True, slots=True)
class QuotaLine:
    """One token's quota against its lane's worst case. Never holds the token itself.

    ``used_today`` counts the check's own ``token_info`` call, so that
    ``left == max(0, limit - used_today)`` are the calls really left for the run.
    """

    token_id: str
    token_names: tuple[str, ...]
    server: str
    limit: int
    used_today: int
    left: int
    worst_case: int
    enough: bool


def worst_case(lane: Lane) -> int:
    """The most calls ``lane`` can make: each clear once, plus each of its retries."""
    return sum(1 + clear.retries for clear in lane.clears)


async def check_quota(
    lanes: Sequence[Lane],
    client: WolkvoxClient,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    usage_includes_check: bool = False,
    locks: TokenLocks | None = None,
) -> list[QuotaLine]:
    """Ask each lane's token for its quota; one :class:`QuotaLine` per lane, in order.

    ``usage_includes_check`` says whether ``token_use_today`` already counts the
    ``token_info`` call that reported it; by default it is taken not to, and
    that call is added (the cautious reading: at worst one call too few is
    reported as left). Lanes without clears are left out. With ``locks``, each
    call holds its token's lock, so it never meets another process's call.

    Raises :class:`TokenInfoError` naming every token whose quota could not be
    read (its names and ``token_id``, never its value), after the other calls
    have finished; :class:`ValueError` when a lane has no token read, or two
    lanes hold the same token.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    checked = [lane for lane in lanes if lane.clears]
    _check_lanes(checked)
    gate = asyncio.Semaphore(max_parallel)
    holds: TokenLocks = locks or NoLocks()
    spent_by_check = 0 if usage_includes_check else 1

    async def one(lane: Lane) -> QuotaLine | TokenInfoError:
        assert lane.secret is not None  # _check_lanes
        server = lane.clears[0].server
        try:
            async with gate, holds.hold(lane.token_id):
                try:
                    info = await client.token_info(server, lane.secret, timeout_s)
                except TokenInfoError as exc:
                    message = (
                        f"cannot read the daily quota of {_label(lane)} on server {server}: {exc}"
                    )
                    return TokenInfoError(message, http_status=exc.http_status, code=exc.code)
        finally:
            holds.forget(lane.token_id)  # thousands of tokens: no descriptor kept for each
        return _line(lane, server, info, spent_by_check)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(lane)) for lane in checked]
    outcomes = [task.result() for task in tasks]
    failures = [o for o in outcomes if isinstance(o, TokenInfoError)]
    if failures:
        first = failures[0]
        raise TokenInfoError(
            "\n".join(str(f) for f in failures), http_status=first.http_status, code=first.code
        )
    return [o for o in outcomes if isinstance(o, QuotaLine)]


def _check_lanes(lanes: Sequence[Lane]) -> None:
    seen: set[str] = set()
    for lane in lanes:
        if lane.secret is None:
            raise ValueError(f"lane {_label(lane)} has no token: read the tokens first")
        if lane.secret.token_id in seen:
            # Two calls at once on one token would break wolkvox's rule.
            raise ValueError(f"two lanes hold the same token ({lane.secret.token_id})")
        seen.add(lane.secret.token_id)


def _line(lane: Lane, server: str, info: TokenInfo, spent_by_check: int) -> QuotaLine:
    used = info.token_use_today + spent_by_check
    left = max(0, info.token_limit - used)
    worst = worst_case(lane)
    return QuotaLine(
        token_id=lane.token_id,
        token_names=lane.token_names,
        server=server,
        limit=info.token_limit,
        used_today=used,
        left=left,
        worst_case=worst,
        enough=worst <= left,
    )


def _label(lane: Lane) -> str:
    return _named(lane.token_names, lane.token_id)


def _named(token_names: Sequence[str], token_id: str) -> str:
    """How a token is named in output: its names in the plan and its fingerprint."""
    names = ", ".join(_printable(name) for name in token_names)
    return f"{names} (token {token_id})" if names and names != token_id else token_id


def _printable(text: str) -> str:
    """``text`` safe for a terminal: no control characters or line breaks."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


_HEADERS = ("TOKEN", "SERVER", "LIMIT", "USED TODAY", "LEFT", "WORST CASE", "")


def render_quota(lines: Sequence[QuotaLine]) -> str:
    """The quota check as a table for stderr, one row per token, and what it means.

    Tokens are shown by name and ``token_id`` only.
    """
    if not lines:
        return "quota check: no token to check"
    rows = [_HEADERS] + [
        (
            _named(line.token_names, line.token_id),
            _printable(line.server),
            str(line.limit),
            str(line.used_today),
            str(line.left),
            str(line.worst_case),
            "OK" if line.enough else "NOT ENOUGH",
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    text = ["quota check (calls per token per day):"]
    for row in rows:
        cells = [
            cell.ljust(width) if i in (0, 1, 6) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        text.append("  " + "  ".join(cells).rstrip())
    text.append(
        "  worst case: every clear once plus all its retries; "
        "used today includes this check's own token_info call"
    )
    short = [line for line in lines if not line.enough]
    if short:
        text.append(
            f"{len(short)} of {len(lines)} token(s) may run out of calls today: "
            "split the plan, lower retries, or wait for the quota to reset"
        )
    return "\n".join(text)
