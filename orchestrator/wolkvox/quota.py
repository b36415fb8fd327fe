"""``--check-quota``: does every token have the calls left today that its lane may need?

Before anything is cleared, each lane's token is asked for its daily quota with
wolkvox's ``token_info`` API (one call, which itself counts against the quota),
and the answer is set against the lane's worst case: every clear sent once plus
every retry it may make, ``sum(1 + clear.retries)``. A run that could run out
of calls half-way (leaving some campaigns cleared and others not) is better
refused before it starts.

One ``token_info`` call per token, on the server of its lane's first clear (the
quota belongs to the token, whichever server answers). Tokens are checked side
by side, each once, so no token ever has two calls at once.

A pool is checked as a whole: a token that runs out of calls leaves the pool and
another carries its campaign on, so the pool has enough when its tokens together
have the calls left for the whole pool's worst case (less what a token must keep
for a lane of its own). Each token of a pool gets a line of its own too, for
what it has left; the pool's line decides.

wolkvox states what is left twice (``token_limit - token_use_today`` and
``available_consumption_options``): the smaller is taken. A figure that cannot
be read is a warning naming its field, never a refused run. Where the
available count shows that the limit is shared by every token of the
operation (it is ``token_limit - all_token_today``), the plan's tokens on that
server are also checked together, on one ``shared`` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.errors import TokenInfoError
from orchestrator.plan.model import Lane, Token
from orchestrator.state.locks import NoLocks, TokenLocks
from orchestrator.wolkvox.client import COUNT_FIELDS, TokenInfo, WolkvoxClient

__all__ = ["QuotaLine", "check_quota", "render_quota", "worst_case"]

#: How long one ``token_info`` call may take, in seconds.
DEFAULT_TIMEOUT_S = 30.0

#: How many ``token_info`` calls are in flight at once, across lanes.
DEFAULT_MAX_PARALLEL = 32


@dataclass(frozen=True, slots=True)
class QuotaLine:
    """One token's quota (or one server's shared quota) against the worst case. Never a token.

    ``used_today`` counts the check's own ``token_info`` call, so that ``left``
    (never negative) are the calls really left for the run. A figure wolkvox
    sent in a form that could not be read is ``None``, and ``warnings`` say
    which field; ``enough`` is false only when the figures show that the worst
    case may not fit. A ``shared`` line is every token of ``server`` together,
    when wolkvox's answers show that its limit counts the calls of all of them:
    ``token_id`` is then empty.
    """

    token_id: str
    token_names: tuple[str, ...]
    server: str
    limit: int | None
    used_today: int | None
    left: int | None
    worst_case: int
    enough: bool
    description: str | None = None
    warnings: tuple[str, ...] = ()
    shared: bool = False
    #: The pool this line is about (``pool-1``): a token of it, or, without a
    #: ``token_id``, the whole pool.
    pool: str = ""


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
    call holds its token's lock and first waits out the token's busy mark, so it
    never meets another process's call, not even one cut or killed mid-flight.

    Raises :class:`TokenInfoError` naming every token whose quota could not be
    read (its names and ``token_id``, never its value), after the other calls
    have finished; :class:`ValueError` when a lane has no token read, or two
    lanes hold the same token.
    """
    checked = [lane for lane in lanes if lane.clears]
    _check_lanes(checked)
    gate = asyncio.Semaphore(max_parallel)
    holds: TokenLocks = locks or NoLocks()
    spent_by_check = 0 if usage_includes_check else 1

    async def one(token: Token, server: str) -> TokenInfo | TokenInfoError:
        assert token.secret is not None  # _check_lanes
        try:
            async with gate, holds.hold(token.token_id) as lease:
                await asyncio.sleep(lease.busy_left_s)
                try:
                    return await client.token_info(server, token.secret, timeout_s)
                except TokenInfoError as exc:
                    label = _named(token.token_names, token.token_id)
                    message = f"cannot read the daily quota of {label} on server {server}: {exc}"
                    return TokenInfoError(message, http_status=exc.http_status, code=exc.code)
        finally:
            holds.forget(token.token_id)  # thousands of tokens: no descriptor kept for each

    asked = _tokens_to_ask(checked)
    async with asyncio.TaskGroup() as group:
        tasks = {
            token_id: group.create_task(one(token, server))
            for token_id, (token, server) in asked.items()
        }
    outcomes = {token_id: task.result() for token_id, task in tasks.items()}
    failures = [o for o in outcomes.values() if isinstance(o, TokenInfoError)]
    if failures:
        first = failures[0]
        raise TokenInfoError(
            "\n".join(str(f) for f in failures), http_status=first.http_status, code=first.code
        )
    infos = {t: o for t, o in outcomes.items() if isinstance(o, TokenInfo)}
    lines: list[QuotaLine] = []
    alone = {lane.token_id: worst_case(lane) for lane in checked if not lane.pool}
    for lane in checked:
        server = lane.clears[0].server
        if lane.pool:
            lines.extend(_pool_lines(lane, infos, spent_by_check, alone))
        else:
            (token,) = lane.tokens
            info = infos[lane.token_id]
            lines.append(_line(token, server, info, spent_by_check, worst_case(lane)))
    answers = [(asked[t][1], info) for t, info in infos.items()]
    return lines + _shared_lines(checked, answers, spent_by_check)


def _tokens_to_ask(lanes: Sequence[Lane]) -> dict[str, tuple[Token, str]]:
    """Each distinct token once, with the server of the first lane it serves."""
    asked: dict[str, tuple[Token, str]] = {}
    for lane in lanes:
        for token in lane.tokens:
            asked.setdefault(token.token_id, (token, lane.clears[0].server))
    return asked


def _pool_lines(
    lane: Lane, infos: dict[str, TokenInfo], spent_by_check: int, alone: dict[str, int]
) -> list[QuotaLine]:
    """A line per token of the pool, then the pool's: all its tokens against its worst case."""
    server = lane.clears[0].server
    members = [
        dataclasses.replace(
            _line(token, server, infos[token.token_id], spent_by_check, 0), pool=lane.token_id
        )
        for token in lane.pool
    ]
    # A token with a lane of its own keeps that lane's worst case for it.
    lefts = [None if m.left is None else max(0, m.left - alone.get(m.token_id, 0)) for m in members]
    left = _total(lefts)
    worst = worst_case(lane)
    pool = QuotaLine(
        token_id="",
        token_names=lane.token_names,
        server=server,
        limit=_total(m.limit for m in members),
        used_today=_total(m.used_today for m in members),
        left=left,
        worst_case=worst,
        enough=left is None or worst <= left,
        pool=lane.token_id,
    )
    return [*members, pool]


def _total(figures: Iterable[int | None]) -> int | None:
    values = list(figures)
    return None if None in values else sum(v for v in values if v is not None)


def _check_lanes(lanes: Sequence[Lane]) -> None:
    seen: set[str] = set()
    for lane in lanes:
        if any(token.secret is None for token in lane.tokens):
            label = _named(lane.token_names, lane.token_id)
            raise ValueError(f"lane {label} has no token: read the tokens first")
        if lane.pool:
            continue  # a token alone and in a pool is one token: it is asked once
        assert lane.secret is not None
        if lane.secret.token_id in seen:
            # Two calls at once on one token would break wolkvox's rule.
            raise ValueError(f"two lanes hold the same token ({lane.secret.token_id})")
        seen.add(lane.secret.token_id)


def _line(token: Token, server: str, info: TokenInfo, spent_by_check: int, worst: int) -> QuotaLine:
    label = _named(token.token_names, token.token_id)
    warnings = [_field_warning(label, name, info) for name in COUNT_FIELDS]
    used = None if info.token_use_today is None else info.token_use_today + spent_by_check
    # Both ways wolkvox states what is left are honoured: the smaller one wins.
    candidates = []
    if info.token_limit is not None and used is not None:
        candidates.append(info.token_limit - used)
    if info.available_consumption_options is not None:
        candidates.append(info.available_consumption_options - spent_by_check)
    left = max(0, min(candidates)) if candidates else None
    if left is None:
        warnings.append(
            f"{label}: quota not checked: neither token_limit with token_use_today "
            "nor available_consumption_options could be read"
        )
    return QuotaLine(
        token_id=token.token_id,
        token_names=token.token_names,
        server=server,
        limit=info.token_limit,
        used_today=used,
        left=left,
        worst_case=worst,
        enough=left is None or worst <= left,
        description=info.description,
        warnings=tuple(w for w in warnings if w),
    )


def _field_warning(label: str, name: str, info: TokenInfo) -> str:
    """Why field ``name`` of ``info`` cannot be used, or ``""`` when it can."""
    if name in info.unreadable:
        return f"{label}: token_info field {name} could not be read (not a count)"
    if getattr(info, name) is None:
        return f"{label}: token_info answer has no {name}"
    return ""


def _shares_limit(info: TokenInfo) -> bool:
    """Whether wolkvox counts this token's limit against every token's use of the operation.

    wolkvox's own ``available_consumption_options`` tells which use it subtracts
    from ``token_limit``: ``all_token_today`` (shared) or ``token_use_today``.
    When the two uses are equal the answer cannot tell; the token's own line
    covers that case.
    """
    limit, shared_use, left = (
        info.token_limit,
        info.all_token_today,
        info.available_consumption_options,
    )
    if limit is None or shared_use is None or left is None:
        return False
    return left == max(0, limit - shared_use) and shared_use != info.token_use_today


def _shared_lines(
    lanes: Sequence[Lane], answers: Sequence[tuple[str, TokenInfo]], spent_by_check: int
) -> list[QuotaLine]:
    """One line per server whose limit is shared: the worst case of all its tokens together."""
    asked: dict[str, list[TokenInfo]] = {}
    for server, info in answers:
        asked.setdefault(server, []).append(info)
    lines = []
    for server, infos in asked.items():
        shared = [i for i in infos if _shares_limit(i)]
        if not shared:
            continue
        limit = min(i.token_limit for i in shared if i.token_limit is not None)
        # Each answer saw the operation's use at its own moment, some before the other
        # checks' calls: count every check call on this server on top of the highest.
        highest = max(i.all_token_today for i in shared if i.all_token_today is not None)
        used = highest + len(infos) - 1 + spent_by_check
        left = max(0, limit - used)
        worst = sum(1 + c.retries for lane in lanes for c in lane.clears if c.server == server)
        lines.append(
            QuotaLine(
                token_id="",
                token_names=(),
                server=server,
                limit=limit,
                used_today=used,
                left=left,
                worst_case=worst,
                enough=worst <= left,
                shared=True,
            )
        )
    return lines


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

    Tokens are shown by name, ``token_id`` and wolkvox's description only.
    Figures that could not be read show as ``?``; the warnings follow the table.
    """
    if not lines:
        return "quota check: no token to check"
    rows = [_HEADERS] + [
        (
            _row_label(line),
            _printable(line.server),
            _figure(line.limit),
            _figure(line.used_today),
            _figure(line.left),
            "-" if line.pool and line.token_id else str(line.worst_case),
            _verdict(line),
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
    if any(line.shared for line in lines):
        text.append(
            "  all tokens: the server's limit counts the calls of every token of the "
            "operation (all_token_today), so the plan's tokens there must fit together"
        )
    text.extend(f"warning: {w}" for line in lines for w in line.warnings)
    short = [line for line in lines if not line.enough]
    if short:
        text.append(
            f"{len(short)} of {len(lines)} token(s) may run out of calls today: "
            "split the plan, lower retries, or wait for the quota to reset"
        )
    return "\n".join(text)


def _row_label(line: QuotaLine) -> str:
    if line.shared:
        return "all tokens (shared limit)"
    if line.pool and not line.token_id:
        return f"{line.pool}, all its tokens ({', '.join(map(_printable, line.token_names))})"
    label = _named(line.token_names, line.token_id)
    return f'{label} "{_printable(line.description)}"' if line.description else label


def _figure(value: int | None) -> str:
    return "?" if value is None else str(value)


def _verdict(line: QuotaLine) -> str:
    if line.pool and line.token_id:
        return f"in {line.pool}"
    if not line.enough:
        return "NOT ENOUGH"
    return "OK" if line.left is not None else "NOT CHECKED"
