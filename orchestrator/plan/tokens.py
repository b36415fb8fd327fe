"""Read tokens and group clears into lanes: one lane per distinct token, one per pool.

Two token names holding the same value share one lane: wolkvox forbids using
one token twice at once, whatever it is called in the plan. A pool's clears make
one lane served by all of its tokens; a token in a pool and also named alone is
still one token, whose calls the scheduler keeps one at a time.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from orchestrator.errors import PlanError, Problem
from orchestrator.plan.model import Clear, Lane, Plan, Secret, Token, TokenPool, TokenRef

Keyring = Mapping[TokenRef, Secret]

#: The most bytes read from a token file; a longer file is refused.
MAX_TOKEN_FILE_BYTES = 4096

#: Campaigns a token message names before it says how many more need the token.
_SHOWN_CAMPAIGNS = 10


def read_tokens(plan: Plan, environ: Mapping[str, str] | None = None) -> dict[TokenRef, Secret]:
    """Read every token the plan names; raise :class:`PlanError` naming each one missing.

    Each token that cannot be read is told once, at its first use, with the
    campaigns that need it. Messages name the variable or file, never the value.
    """
    keyring, problems = _read_all(plan, environ)
    if not problems:
        problems = _pools_sharing_a_token(plan, keyring)
    if problems:
        raise PlanError(problems)
    return keyring


def missing_tokens(plan: Plan, environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for tokens that cannot be read now (``validate`` does not need them)."""
    _, problems = _read_all(plan, environ)
    return [f"{p.source}:{p.line}: warning: {p.message}" for p in problems]


def _read_all(
    plan: Plan, environ: Mapping[str, str] | None
) -> tuple[dict[TokenRef, Secret], list[Problem]]:
    """Every token of the plan that can be read, and a problem for each one that cannot."""
    env = os.environ if environ is None else environ
    keyring: dict[TokenRef, Secret] = {}
    problems: list[Problem] = []
    for ref, clears in _users(plan).items():
        value, why = _read(ref, env)
        if why is None:
            keyring[ref] = Secret(value)
        else:
            problems.append(Problem(plan.source, clears[0].line, "", _needed(why, clears)))
    return keyring, problems


def placeholder_tokens(plan: Plan) -> dict[TokenRef, Secret]:
    """One made-up token per token name, for ``--simulate``: lanes stay apart by name."""
    return {ref: Secret(f"simulated-{ref}") for ref in plan.token_refs()}


def build_lanes(clears: tuple[Clear, ...], keyring: Keyring | None) -> tuple[Lane, ...]:
    """Group clears by token or pool, in plan order; lanes come in order of their first clear.

    Without a keyring, lanes are grouped by token name and named after it. A pool's
    lane is named ``pool-1``, ``pool-2``... in order of first use.
    """
    groups: dict[object, tuple[list[str], Secret | None, list[Clear]]] = {}
    for clear in clears:
        key: object
        if isinstance(clear.token, TokenPool):
            key, secret = clear.token, None
        else:
            secret = keyring[clear.token] if keyring is not None else None
            key = secret.token_id if secret is not None else str(clear.token)
        names, _, members = groups.setdefault(key, ([], secret, []))
        if str(clear.token) not in names:
            names.append(str(clear.token))
        members.append(clear)
    lanes = []
    pools = 0
    for key, (names, secret, members) in groups.items():
        if isinstance(key, TokenPool):
            pools += 1
            tokens = _pool_tokens(key, keyring)
            names = [name for token in tokens for name in token.token_names]
            lanes.append(Lane(f"pool-{pools}", tuple(names), None, tuple(members), tokens))
        else:
            assert isinstance(key, str)
            lanes.append(Lane(key, tuple(names), secret, tuple(members)))
    return tuple(lanes)


def _pool_tokens(pool: TokenPool, keyring: Keyring | None) -> tuple[Token, ...]:
    """The pool's distinct tokens: two names holding one value are one token."""
    tokens: dict[str, tuple[list[str], Secret | None]] = {}
    for ref in pool.refs:
        secret = keyring[ref] if keyring is not None else None
        key = secret.token_id if secret is not None else str(ref)
        tokens.setdefault(key, ([], secret))[0].append(str(ref))
    return tuple(
        Token(token_id, tuple(names), secret) for token_id, (names, secret) in tokens.items()
    )


def _pools_sharing_a_token(plan: Plan, keyring: Keyring) -> list[Problem]:
    """A problem for each token (by value) that two pools hold; never the value itself."""
    owner: dict[str, tuple[TokenPool, TokenRef, Clear]] = {}
    problems = []
    reported: set[str] = set()
    for clear in plan.clears:
        pool = clear.token
        if not isinstance(pool, TokenPool):
            continue
        for ref in pool.refs:
            token_id = keyring[ref].token_id
            other, other_ref, there = owner.setdefault(token_id, (pool, ref, clear))
            if other != pool and token_id not in reported:
                reported.add(token_id)
                message = (
                    f"{ref} holds the same token as {other_ref} of another pool (line "
                    f"{there.line}): a token belongs to one pool at most"
                )
                problems.append(Problem(plan.source, clear.line, "", message))
    return problems


def _users(plan: Plan) -> dict[TokenRef, list[Clear]]:
    """The clears of each token, a pool's tokens included, in order of the token's first use."""
    users: dict[TokenRef, list[Clear]] = {}
    for clear in plan.clears:
        for ref in clear.token.refs:
            users.setdefault(ref, []).append(clear)
    return users


def _needed(why: str, clears: list[Clear]) -> str:
    """``why (needed by campaigns 3001, 3002)``: which campaigns wait for this token."""
    campaigns = list(dict.fromkeys(clear.campaign_id for clear in clears))
    shown = ", ".join(campaigns[:_SHOWN_CAMPAIGNS])
    more = len(campaigns) - _SHOWN_CAMPAIGNS
    if more > 0:
        shown += f" and {more} more"
    return f"{why} (needed by campaign{'s' if len(campaigns) > 1 else ''} {shown})"


def _read(ref: TokenRef, env: Mapping[str, str]) -> tuple[str, str | None]:
    """Return (value, None), or ("", why it cannot be used)."""
    if ref.kind == "env":
        if ref.name not in env:
            return "", f"environment variable {ref.name} is not set"
        value, what = env[ref.name].strip(), f"environment variable {ref.name}"
    else:
        what = f"token file {ref.name}"
        try:
            text, refused = _read_token_file(ref.name)
        except (OSError, UnicodeDecodeError) as exc:
            return "", f"{what} cannot be read ({_os_reason(exc)})"
        if refused is not None:
            return "", f"{what} {refused}"
        value = text.strip()
    if not value:
        return "", f"{what} is empty"
    if not value.isprintable() or any(ch.isspace() for ch in value):
        # A header value with spaces or control characters is malformed or an injection.
        return "", f"{what} holds spaces or control characters"
    return value, None


def _read_token_file(path: str) -> tuple[str, str | None]:
    """(text, None) of a regular file of at most :data:`MAX_TOKEN_FILE_BYTES`, else ("", why).

    Opened without blocking: a FIFO with no writer would otherwise hang the
    open, and a device such as /dev/zero never ends.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return "", f"is {_file_kind(mode)}, not a regular file"
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        return "", f"is larger than {MAX_TOKEN_FILE_BYTES} bytes: not a token"
    return data.decode("utf-8"), None


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else type(exc).__name__
