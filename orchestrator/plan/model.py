"""Frozen values that describe what a run will do: clears, grouped into lanes.

A :class:`Plan` is produced by :func:`orchestrator.plan.validate.load_plan` and never
changes afterwards. Tokens are not part of it: a clear names where its token
comes from (:class:`TokenRef`); :mod:`orchestrator.plan.tokens` turns those into
:class:`Secret` values and groups the clears into :class:`Lane` objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

#: The values wolkvox accepts in the ``result`` parameter, one per call.
RESULT_FILTERS: tuple[str, ...] = (
    "no-answer",
    "answer-machine",
    "abandon",
    "busy",
    "congestion",
    "unknown",
    "failed",
    "do-not-call",
    "chanunavail",
    "answer",
)

#: The values wolkvox accepts in ``type_campaign``.
CAMPAIGN_TYPES: tuple[str, ...] = ("predictive", "preview")

#: The largest plan a run accepts, after expansion into clears.
MAX_CLEARS = 100_000

DEFAULT_BASE_URL = "https://wv{server}.wolkvox.com"
DEFAULT_MAX_PARALLEL_TOKENS = 32
DEFAULT_COOLDOWN_S = 60.0
#: How long a lane waits out wolkvox's maintenance before its clear fails.
DEFAULT_MAINTENANCE_WAIT_S = 1800.0
DEFAULT_TIMEOUT_S = 90.0
DEFAULT_RETRIES = 3

#: ``results: all`` in a plan: no filter, every record of the campaign; also what logs,
#: reports and the journal call a clear without a result filter.
ALL = "all"


class Order(StrEnum):
    """In which order campaigns of a pool, and lanes waiting for a slot, start."""

    #: The longest expected first (from the journal's durations), so the run ends sooner.
    LONGEST_FIRST = "longest_first"
    #: As written in the plan.
    PLAN = "plan"


class OnFailure(StrEnum):
    """What a lane does after one of its clears fails."""

    STOP = "stop"
    CONTINUE = "continue"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class TokenRef:
    """Where a token is read from: an environment variable or a file."""

    kind: str  # "env" or "file"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def refs(self) -> tuple[TokenRef, ...]:
        """The token references behind this one: itself."""
        return (self,)


@dataclass(frozen=True, slots=True)
class TokenPool:
    """Tokens of one operation that serve a plan's campaigns together.

    Whichever token of the pool is free takes the next campaign that is ready; a
    campaign's clears stay on one token, one at a time, until its chain ends or that
    token leaves the pool (:mod:`orchestrator.run.scheduler`).
    """

    refs: tuple[TokenRef, ...]

    def __str__(self) -> str:
        return f"pool({', '.join(map(str, self.refs))})"


class Secret:
    """A token value that refuses to be printed.

    ``repr`` and ``str`` never show the value; only :meth:`reveal` does, and
    only the HTTP layer calls it.
    """

    __slots__ = ("_token_id", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._token_id = token_fingerprint(value)

    @property
    def token_id(self) -> str:
        """The short, non-reversible fingerprint that names this token in output."""
        return self._token_id

    def reveal(self) -> str:
        """Return the token itself, for the ``wolkvox-token`` header only."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(token_id={self._token_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._token_id)


def campaign_key(campaign_id: str) -> str:
    """The identity of a campaign id: 3001 and 03001 are one campaign to wolkvox."""
    return campaign_id.lstrip("0") or "0"


def token_fingerprint(value: str) -> str:
    """The first 12 hex digits of the SHA-256 of ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Clear:
    """One ``clear_campaign`` call to make: one campaign, at most one result filter.

    ``seq`` is the 1-based position in the expanded plan and stays the same when
    ``--tag`` selects a subset, so logs always match ``orchestrator validate``.
    ``result`` is ``None`` for an unfiltered clear that deletes every record.
    """

    seq: int
    server: str
    type_campaign: str
    campaign_id: str
    result: str | None
    token: TokenRef | TokenPool
    on_failure: OnFailure = OnFailure.STOP
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    tags: tuple[str, ...] = ()
    line: int = 0

    @property
    def result_label(self) -> str:
        """The filter, or ``"all"`` for an unfiltered clear."""
        return self.result if self.result is not None else ALL

    @property
    def target(self) -> tuple[str, str, str]:
        """The campaign this clear deletes from: (server, type_campaign, campaign_id)."""
        return (self.server, self.type_campaign, self.campaign_id)


@dataclass(frozen=True, slots=True)
class Settings:
    """Run-wide settings from the plan's ``settings`` block."""

    max_parallel_tokens: int = DEFAULT_MAX_PARALLEL_TOKENS
    cooldown_s: float = DEFAULT_COOLDOWN_S
    #: Seconds a lane keeps retrying while wolkvox answers "under maintenance".
    maintenance_wait_s: float = DEFAULT_MAINTENANCE_WAIT_S
    base_url: str = DEFAULT_BASE_URL
    #: Campaign ids no clear may touch; a plan that would is refused.
    protect: frozenset[str] = frozenset()
    #: ``redis://`` URL of the shared token locks, or ``None`` for local file locks.
    lock_url: str | None = None
    order: Order = Order.LONGEST_FIRST


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan: its source, settings and the clears in plan order."""

    source: str
    settings: Settings
    clears: tuple[Clear, ...]

    def token_refs(self) -> tuple[TokenRef, ...]:
        """Every distinct token reference, pools' members included, in order of first use."""
        return tuple(dict.fromkeys(ref for c in self.clears for ref in c.token.refs))

    def with_tags(self, tags: frozenset[str]) -> Plan:
        """The plan restricted to clears of campaigns carrying any of ``tags``."""
        kept = tuple(c for c in self.clears if tags.intersection(c.tags))
        return Plan(self.source, self.settings, kept)


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a pool: its fingerprint, the names it has in the plan, its value."""

    token_id: str
    token_names: tuple[str, ...]
    secret: Secret | None


@dataclass(frozen=True, slots=True)
class Lane:
    """The clears that share one token, to be run strictly one at a time, in order.

    ``token_id`` is the token's fingerprint, or, where tokens were not read
    (``validate``), the name of the token reference.

    A pool's lane has its tokens in ``pool`` and no ``secret``; its ``token_id``
    (``pool-1``, ...) names the pool, never a token. Its clears come campaign by
    campaign in the order the campaigns are expected to start, each campaign's
    clears in plan order.
    """

    token_id: str
    token_names: tuple[str, ...]
    secret: Secret | None
    clears: tuple[Clear, ...]
    pool: tuple[Token, ...] = ()

    @property
    def tokens(self) -> tuple[Token, ...]:
        """The tokens that serve this lane: the pool's, or the lane's one token."""
        return self.pool or (Token(self.token_id, self.token_names, self.secret),)

    def campaigns(self) -> tuple[tuple[Clear, ...], ...]:
        """The clears grouped by campaign (server, type, id), in order of first clear."""
        chains: dict[tuple[str, str, str], list[Clear]] = {}
        for clear in self.clears:
            # Never two calls at once on one campaign, however its id is written.
            key = (clear.server, clear.type_campaign, campaign_key(clear.campaign_id))
            chains.setdefault(key, []).append(clear)
        return tuple(tuple(chain) for chain in chains.values())


def count_tokens(lanes: Sequence[Lane]) -> int:
    """How many distinct tokens serve ``lanes``: each pool's tokens, each lane's one."""
    return len({token.token_id for lane in lanes for token in lane.tokens})
