"""The wolkvox ``clear_campaign`` client: build the call, send it, judge the answer.

The HTTP layer is a replaceable :data:`Transport`: a plain async function from
:class:`HttpRequest` to :class:`HttpResponse`. ``AiohttpTransport`` is the real
one; tests pass a handler function. :func:`classify` is pure. Everything a server
sends back is passed through :func:`redact` before anyone sees it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import quote

from orchestrator.errors import TokenInfoError, TransportError
from orchestrator.plan.model import Clear, Secret
from orchestrator.wolkvox.redact import redact

#: The header that carries the token; the only place a token value ever goes.
TOKEN_HEADER = "wolkvox-token"
#: Path of the campaign API, appended to the server's base URL.
CAMPAIGN_PATH = "/api/v2/campaign.php"
#: Path of the information API (``token_info``), appended to the server's base URL.
INFORMATION_PATH = "/api/v2/information.php"
#: Answers are read up to this size, counted after decompression; a longer one is
#: not read further and fails its attempt.
MAX_BODY_BYTES = 1024 * 1024
#: Longest ``msg``/``error`` text kept from a body.
MAX_TEXT_CHARS = 500
#: Longest transport error message.
MAX_ERROR_CHARS = 200
#: The longest wait a ``Retry-After`` can impose: the cap of the backoff itself
#: (``cap_s`` of :func:`orchestrator.run.backoff.backoff_delay`). A server asking
#: for more (a year, a date in 2099) gets this, and its answer says it was capped.
MAX_RETRY_AFTER_S = 60.0


class Verdict(StrEnum):
    """What an answer means for the clear and for its token."""

    SUCCEEDED = "succeeded"
    #: Worth another attempt of the same clear (timeouts, 5xx, 408, 429, token busy).
    RETRY = "retry"
    #: The token is refused (401, 403 PLEASE VALIDATE TOKEN): every later call fails too.
    TOKEN_REJECTED = "token_rejected"
    #: The token's daily quota is spent (403 TOKEN LIMIT EXCEEDED).
    QUOTA_EXHAUSTED = "token_quota_exhausted"
    #: wolkvox is under maintenance (a 403 that says so): nothing was done; wait and retry.
    MAINTENANCE = "maintenance"
    #: Any other answer: the clear failed or is unconfirmed; not retried.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Answer:
    """The judged outcome of one attempt.

    ``outcome_unknown`` is true when the request may have reached wolkvox but no
    answer came back (timeout, dropped connection): the token must cool down.
    ``retry_after_capped`` is true when the server asked to wait longer than
    :data:`MAX_RETRY_AFTER_S`; ``retry_after_s`` then holds that cap.
    """

    verdict: Verdict
    http_status: int | None = None
    code: int | None = None
    msg: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    outcome_unknown: bool = False
    retry_after_capped: bool = False


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request as the transport sends it; the token travels as a :class:`Secret`."""

    method: str
    url: str
    token: Secret
    timeout_s: float


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What came back: status, headers (looked up by lower-case name) and the raw body.

    ``oversized`` is true when the answer was longer than the transport reads:
    ``body`` then holds only its first bytes.
    """

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    oversized: bool = False


#: Sends one request, once; raises :class:`orchestrator.errors.TransportError` when no
#: answer came (an :class:`orchestrator.errors.OutcomeUnknown` when it may have arrived).
Transport = Callable[[HttpRequest], Awaitable[HttpResponse]]


# --------------------------------------------------------------------------- URLs


def server_base(template: str, server: str) -> str:
    """The base URL of ``server``: ``template`` with ``{server}`` substituted, no trailing slash.

    The server code is percent-encoded so that a malformed one ("evil.com#")
    can never move the host, and with it the token, outside the template's
    domain; real codes (digits, letters) are unchanged, leading zeros included.
    """
    return template.replace("{server}", _quoted(server)).rstrip("/")


def _quoted(value: str) -> str:
    """``value`` percent-encoded as a URL component (nothing is safe, not even ``/``)."""
    return quote(value, safe="")


def build_url(template: str, clear: Clear) -> str:
    """The ``clear_campaign`` URL of ``clear``: query in the order api, type, id, result."""
    query = (
        f"api=clear_campaign&type_campaign={_quoted(clear.type_campaign)}"
        f"&campaign_id={_quoted(clear.campaign_id)}"
    )
    if clear.result is not None:
        query += f"&result={_quoted(clear.result)}"
    return f"{server_base(template, clear.server)}{CAMPAIGN_PATH}?{query}"


def token_info_url(template: str, server: str) -> str:
    """The ``token_info`` URL on ``server``."""
    return f"{server_base(template, server)}{INFORMATION_PATH}?api=token_info"


# --------------------------------------------------------------- classification

_DIGITS = re.compile(r"[0-9]{1,9}")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _as_int(value: object) -> int | None:
    """An int from a JSON int, an integral float or a string of digits; else ``None``."""
    if isinstance(value, bool):  # bool is an int subclass; true is not a code
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    return None


def one_line(value: object, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``value`` as one printable line of at most ``limit`` chars; ``None`` stays ``None``."""
    if value is None:
        return None
    text = (value if isinstance(value, str) else str(value))[: limit + 1]
    if not text.isprintable():
        # Server text ends up on terminals and in logs: no control sequences, no line breaks.
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_body(raw: bytes) -> tuple[dict[str, object] | None, str | None]:
    """The body as a JSON object, or ``None`` and why it is not one."""
    if not raw.strip():
        return None, "empty body"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        return None, "unreadable body"
    if not isinstance(value, dict):
        return None, f"body is a JSON {type(value).__name__}, not an object"
    return value, None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header ``name`` (lower case); tolerant of mappings that kept the original case."""
    if name in headers:
        return headers[name]
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    A date is taken relative to ``now`` (default: the current time); one in the
    past gives 0. A count of seconds too long for a float is infinite: the wait is
    capped by :func:`classify`, never ignored. Anything unparseable or negative
    gives ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may lack a zone
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_after(headers: Mapping[str, str], now: datetime | None) -> tuple[float | None, bool]:
    """The wait an answer asks for, at most :data:`MAX_RETRY_AFTER_S`, and whether it was cut."""
    asked = parse_retry_after(_header(headers, "retry-after"), now=now)
    if asked is None:
        return None, False
    return min(asked, MAX_RETRY_AFTER_S), asked > MAX_RETRY_AFTER_S


def _retryable(code: int) -> bool:
    """Whether ``code`` (an HTTP status or a body's code) asks for another attempt."""
    return code in (408, 429) or 500 <= code <= 599


def _verdict_for(code: int, text: str) -> Verdict:
    """The verdict of a non-success answer whose effective code is ``code``."""
    if _retryable(code):
        return Verdict.RETRY
    if code == 401:
        return Verdict.TOKEN_REJECTED
    if code == 403:
        upper = text.upper()
        # "EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN" also mentions a
        # limit: it means "busy, try again", so it must be recognised first.
        if "SIMULTANEOUS" in upper:
            return Verdict.RETRY
        # During its maintenance windows (backups) wolkvox refuses every call with a 403.
        if "MAINTENANCE" in upper:
            return Verdict.MAINTENANCE
        if "VALIDATE TOKEN" in upper:
            return Verdict.TOKEN_REJECTED
        if "TOKEN LIMIT EXCEEDED" in upper:
            return Verdict.QUOTA_EXHAUSTED
    return Verdict.FAILED


def classify(response: HttpResponse, *, now: datetime | None = None) -> Answer:
    """Judge one HTTP answer of ``clear_campaign``. Pure (``now`` only dates Retry-After).

    Success needs all of: HTTP 2xx, a JSON object body, a ``code`` (int or
    numeric string) in 200-299 and an ``error`` that is null, empty or absent.
    The HTTP status is read first: 408, 429 and 5xx are RETRY whatever the body
    says (a proxy's 503 may wrap any body), and a 3xx is FAILED, since redirects
    are not followed (one could carry the token to another host). Otherwise the
    effective code (the body's ``code`` when usable, else the HTTP status) and
    the body's text decide between RETRY, TOKEN_REJECTED, QUOTA_EXHAUSTED,
    MAINTENANCE and FAILED. An answer too long to read fails, unless its status asks for a retry.
    """
    status = response.status
    if response.oversized:
        verdict = Verdict.RETRY if _retryable(status) else Verdict.FAILED
        retry_after, capped = _retry_after(response.headers, now)
        return Answer(
            verdict,
            http_status=status,
            code=status,
            error=f"answer longer than {len(response.body)} bytes, not read: HTTP {status}",
            retry_after_s=retry_after,
            retry_after_capped=capped,
        )

    body, problem = _parse_body(response.body)
    raw_msg = body.get("msg") if body is not None else None
    raw_error = body.get("error") if body is not None else None
    body_code = _as_int(body.get("code")) if body is not None else None
    code = body_code if body_code is not None else status
    msg = one_line(raw_msg)
    error: str | None = one_line(raw_error)
    if error is not None and not error.strip():
        error = None

    if 200 <= status <= 299 and body_code is not None and 200 <= body_code <= 299:
        verdict = Verdict.SUCCEEDED if error is None else Verdict.FAILED
        return Answer(verdict, http_status=status, code=code, msg=msg, error=error)
    retry_after, capped = _retry_after(response.headers, now)
    if 300 <= status <= 399:
        verdict = Verdict.FAILED
        error = error or f"redirect not followed: HTTP {status}"
    else:
        text = " ".join(str(t) for t in (raw_error, raw_msg) if t is not None)
        verdict = Verdict.RETRY if _retryable(status) else _verdict_for(code, text)
        if problem is not None:
            error = f"{problem}: HTTP {status}"
        elif body_code is None and error is None:
            error = f"no usable code in body: HTTP {status}"

    return Answer(
        verdict,
        http_status=status,
        code=code,
        msg=msg,
        error=error,
        retry_after_s=retry_after,
        retry_after_capped=capped,
    )


# -------------------------------------------------------------------- redaction


def _redact_answer(answer: Answer, token: str) -> Answer:
    """``answer`` with the token masked in the texts a server sent."""
    return replace(
        answer,
        msg=None if answer.msg is None else redact(answer.msg, token),
        error=None if answer.error is None else redact(answer.error, token),
    )


# ----------------------------------------------------------------------- client


#: The counts of wolkvox's ``token_info`` answer, in the order its page lists them
#: (after ``description``, which is only shown).
COUNT_FIELDS = (
    "token_limit",
    "token_use_today",
    "all_token_today",
    "available_consumption_options",
)
#: Every field of a ``token_info`` answer.
TOKEN_INFO_FIELDS = ("description", *COUNT_FIELDS)

# wolkvox sends counts as text, with thousands grouped by commas ("4,800"). A dot is
# left unread: "4.800" may be four thousand eight hundred or four point eight.
_COUNT = re.compile(r"[0-9]{1,12}|[0-9]{1,3}(?:,[0-9]{3}){1,3}")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's daily quota as ``token_info`` reported it; ``None`` where a value was unusable.

    ``all_token_today`` is the use of every token of the operation today;
    ``available_consumption_options`` is what wolkvox itself counts as left.
    ``unreadable`` names the fields that were sent but could not be read (blank,
    not a count); a field that was not sent at all is ``None`` and not named.
    """

    token_limit: int | None
    token_use_today: int | None
    all_token_today: int | None = None
    available_consumption_options: int | None = None
    description: str | None = None
    unreadable: tuple[str, ...] = ()


def _as_count(value: object) -> int | None:
    """A count: a JSON int or integral float, or text like ``"4,800"``; else ``None``."""
    if isinstance(value, str):
        text = value.strip()
        return int(text.replace(",", "")) if _COUNT.fullmatch(text) else None
    count = _as_int(value)
    return count if count is not None and count >= 0 else None


def _info_record(body: dict[str, object]) -> dict[str, object] | None:
    """Where the fields are: the first item of a ``data`` list, a ``data`` object, or the body."""
    data = body.get("data")
    candidates = [data[0] if isinstance(data, list) and data else data, body]
    for candidate in candidates:
        if isinstance(candidate, dict) and any(name in candidate for name in TOKEN_INFO_FIELDS):
            return candidate
    return None


def _info_fields(record: dict[str, object]) -> TokenInfo:
    counts: dict[str, int | None] = {}
    unreadable = []
    for name in COUNT_FIELDS:
        raw = record.get(name)
        counts[name] = None if raw is None else _as_count(raw)
        if raw is not None and counts[name] is None:
            unreadable.append(name)
    description = one_line(record.get("description"), 80)
    return TokenInfo(
        token_limit=counts["token_limit"],
        token_use_today=counts["token_use_today"],
        all_token_today=counts["all_token_today"],
        available_consumption_options=counts["available_consumption_options"],
        description=description.strip() or None if description is not None else None,
        unreadable=tuple(unreadable),
    )


def parse_token_info(response: HttpResponse) -> TokenInfo:
    """Read a ``token_info`` answer; raise :class:`TokenInfoError` if it is not one.

    wolkvox sends ``{"code": "200", ..., "data": [{...}]}`` with every value as
    text; ints, a ``data`` object and fields at the top level are read too. A
    value that cannot be read is ``None`` in the result and named in
    ``unreadable``: the caller decides what it costs. An error answer, or one
    without any of the :data:`TOKEN_INFO_FIELDS`, is a :class:`TokenInfoError`.
    """
    status = response.status
    body, problem = _parse_body(response.body)
    if body is None:
        raise TokenInfoError(f"token_info: {problem}: HTTP {status}", http_status=status)
    code = _as_int(body.get("code"))
    # wolkvox puts the status name in error ("FORBIDDEN") and the reason in msg: keep both.
    texts = [one_line(body.get(key)) for key in ("error", "msg")]
    text = ": ".join(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if not 200 <= status <= 299 or (code is not None and not 200 <= code <= 299):
        shown = code if code is not None else status
        raise TokenInfoError(
            f"token_info: HTTP {status}, code {shown}: {text}".rstrip(": "),
            http_status=status,
            code=code,
        )
    record = _info_record(body)
    if record is None:
        raise TokenInfoError(
            "token_info: no token_limit/token_use_today in answer", http_status=status, code=code
        )
    return _info_fields(record)


class WolkvoxClient:
    """Makes wolkvox calls through a :data:`Transport` and judges the answers."""

    def __init__(self, transport: Transport, base_url: str) -> None:
        self._transport = transport
        self._base_url = base_url

    async def clear(self, clear: Clear, token: Secret) -> Answer:
        """Send one ``clear_campaign`` call and return its judged :class:`Answer`.

        A call that got no HTTP answer is a RETRY whose ``outcome_unknown`` is the
        transport's verdict on whether it may have reached wolkvox. The token is
        masked in whatever text came back. Cancellation propagates.
        """
        secret = token.reveal()
        request = HttpRequest(
            method="DELETE",
            url=build_url(self._base_url, clear),
            token=token,
            timeout_s=clear.timeout_s,
        )
        try:
            response = await self._transport(request)
        except TransportError as exc:
            error = one_line(redact(str(exc), secret), MAX_ERROR_CHARS) or "transport error"
            return Answer(Verdict.RETRY, error=error, outcome_unknown=exc.outcome_unknown)
        return _redact_answer(classify(response), secret)

    async def token_info(self, server: str, token: Secret, timeout_s: float) -> TokenInfo:
        """The quota of ``token`` on ``server``; :class:`TokenInfoError` if unavailable."""
        request = HttpRequest(
            method="GET",
            url=token_info_url(self._base_url, server),
            token=token,
            timeout_s=timeout_s,
        )
        secret = token.reveal()
        try:
            response = await self._transport(request)
        except TransportError as exc:
            raise TokenInfoError(f"token_info: {redact(str(exc), secret)}") from exc
        try:
            info = parse_token_info(response)
        except TokenInfoError as exc:
            message = redact(str(exc), secret)
            if message != str(exc):  # the server echoed the token: no chain to show it
                raise TokenInfoError(message, http_status=exc.http_status, code=exc.code) from None
            raise
        if info.description is not None and secret and secret in info.description:
            return replace(info, description=redact(info.description, secret))
        return info
