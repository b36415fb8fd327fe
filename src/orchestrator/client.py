"""The wolkvox ``clear_campaign`` client: build the call, send it, judge the answer.

The HTTP layer is a replaceable :data:`Transport`: a plain async function from
:class:`HttpRequest` to :class:`HttpResponse`. :class:`AiohttpTransport` is the
real one; tests pass a handler function. :func:`classify` is pure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .plan import Secret


class Verdict(StrEnum):
    """What an answer means for the clear and for its token."""

    SUCCEEDED = "succeeded"
    #: Worth another attempt of the same clear (timeouts, 5xx, 408, 429, token busy).
    RETRY = "retry"
    #: The token is refused (401, 403 PLEASE VALIDATE TOKEN): every later call fails too.
    TOKEN_REJECTED = "token_rejected"
    #: The token's daily quota is spent (403 TOKEN LIMIT EXCEEDED).
    QUOTA_EXHAUSTED = "token_quota_exhausted"
    #: Any other answer: the clear failed or is unconfirmed; not retried.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Answer:
    """The judged outcome of one attempt.

    ``outcome_unknown`` is true when the request may have reached wolkvox but no
    answer came back (timeout, dropped connection): the token must cool down.
    """

    verdict: Verdict
    http_status: int | None = None
    code: int | None = None
    msg: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    outcome_unknown: bool = False


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request as the transport sends it; the token travels as a :class:`Secret`."""

    method: str
    url: str
    token: Secret
    timeout_s: float


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What came back: status, headers (lower-cased names) and the raw body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


#: Sends one request; raises :class:`orchestrator.errors.TransportError` when no answer came.
Transport = Callable[[HttpRequest], Awaitable[HttpResponse]]
