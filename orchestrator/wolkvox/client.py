"""The wolkvox ``clear_campaign`` client: build the call, send it, judge the answer.

The HTTP layer is a replaceable :data:`Transport`: a plain async function from
:class:`HttpRequest` to :class:`HttpResponse`. :class:`AiohttpTransport` is the
real one; tests pass a handler function. :func:`classify` is pure.
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
from orchestrator.run.values import quick_init

#: The header that carries the token; the only place a token value ever goes.
TOKEN_HEADER = "wolkvox-token"
#: Path of the campaign API, appended to the server's base URL.
CAMPAIGN_PATH = "/api/v2/campaign.php"
#: Path of the information API (``token_info``), appended to the server's base URL.
INFORMATION_PATH = "/api/v2/information.php"
#: Bodies are read up to this size; a longer one is cut and so will not parse.
MAX_BODY_BYTES = 1024 * 1024
#: Longest ``msg``/``error`` text kept from a body.
MAX_TEXT_CHARS = 500
#: Longest transport error message.
MAX_ERROR_CHARS = 200


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


@quick_init
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


@quick_init
@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request as the transport sends it; the token travels as a :class:`Secret`."""

    method: str
    url: str
    token: Secret
    timeout_s: float


@quick_init
@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What came back: status, headers (looked up by lower-case name) and the raw body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


#: Sends one request; raises :class:`orchestrator.errors.TransportError` when no answer came.
Transport = Callable[[HttpRequest], Awaitable[HttpResponse]]


# --------------------------------------------------------------------------- URLs


def server_base(template: str, server: str) -> str:
    """The base URL of ``server``: ``template`` with ``{server}`` substituted, no trailing slash.

    The server code is percent-encoded so that a malformed one ("evil.com#")
    can never move the host, and with it the token, outside the template's
    domain; real codes (digits, letters) are unchanged, leading zeros included.
    """
    return template.replace("{server}", _quoted(server)).rstrip("/")


# Characters that percent-encoding leaves as they are: checking for them first skips
# quote() for every value a valid plan can hold (a plan of 100,000 clears builds as many URLs).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(value: str) -> str:
    """``value`` percent-encoded as a URL component (nothing is safe, not even ``/``)."""
    if value.isascii() and value.isalnum():  # ids and most codes: no regex needed
        return value
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


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
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


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


_DECODER = json.JSONDecoder()


def _compact_object(raw: bytes) -> dict[str, object] | None:
    """A body that is one UTF-8 JSON object with nothing around it, decoded; else ``None``.

    What ``json.loads`` gives for such a body, without its encoding detection and
    whitespace handling (two thirds of its cost on an answer's few bytes). Anything
    else (``None``) takes the full ``json.loads``.
    """
    if not (raw.startswith(b"{") and raw.endswith(b"}")):
        return None
    try:
        text = raw.decode()
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if end == len(text) else None


def _parse_body(raw: bytes) -> tuple[dict[str, object] | None, str | None]:
    """The body as a JSON object, or ``None`` and why it is not one."""
    value = _compact_object(raw)
    if value is None:
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
    past gives 0. Anything unparseable, negative or non-finite gives ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may lack a zone
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _verdict_for(code: int, text: str) -> Verdict:
    """The verdict of a non-success answer whose effective code is ``code``."""
    if code in (408, 429) or 500 <= code <= 599:
        return Verdict.RETRY
    if code == 401:
        return Verdict.TOKEN_REJECTED
    if code == 403:
        upper = text.upper()
        # "EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN" also mentions a
        # limit: it means "busy, try again", so it must be recognised first.
        if "SIMULTANEOUS" in upper:
            return Verdict.RETRY
        if "VALIDATE TOKEN" in upper:
            return Verdict.TOKEN_REJECTED
        if "TOKEN LIMIT EXCEEDED" in upper:
            return Verdict.QUOTA_EXHAUSTED
    return Verdict.FAILED


def classify(response: HttpResponse, *, now: datetime | None = None) -> Answer:
    """Judge one HTTP answer of ``clear_campaign``. Pure (``now`` only dates Retry-After).

    Success needs all of: HTTP 2xx, a JSON object body, a ``code`` (int or
    numeric string) in 200-299 and an ``error`` that is null, empty or absent.
    Otherwise the effective code (the body's ``code`` when usable, else the
    HTTP status) and the body's text decide between RETRY, TOKEN_REJECTED,
    QUOTA_EXHAUSTED and FAILED. A 3xx is always FAILED: redirects are not
    followed, since one could carry the token to another host.
    """
    status = response.status
    body, problem = _parse_body(response.body)
    raw_msg = body.get("msg") if body is not None else None
    raw_error = body.get("error") if body is not None else None
    body_code = _as_int(body.get("code")) if body is not None else None
    code = body_code if body_code is not None else status
    msg = one_line(raw_msg)
    error = one_line(raw_error)
    if error is not None and not error.strip():
        error = None

    if 200 <= status <= 299 and body_code is not None and 200 <= body_code <= 299:
        verdict = Verdict.SUCCEEDED if error is None else Verdict.FAILED
        # A Retry-After means nothing on a success: not looked up for every clear.
        return Answer(verdict, http_status=status, code=code, msg=msg, error=error)
    retry_after = parse_retry_after(_header(response.headers, "retry-after"), now=now)
    if 300 <= status <= 399:
        verdict = Verdict.FAILED
        error = error or f"redirect not followed: HTTP {status}"
    else:
        text = " ".join(str(t) for t in (raw_error, raw_msg) if t is not None)
        verdict = _verdict_for(code, text)
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
    )


# ------------------------------------------------------------------------ text


def redact(text: str, token: str) -> str:
    """``text`` with every occurrence of ``token`` masked."""
    return text.replace(token, "[token]") if token else text


# ----------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's daily quota and how much of it is used."""

    token_limit: int
    token_use_today: int

    @property
    def remaining(self) -> int:
        """Calls left today (never negative)."""
        return max(0, self.token_limit - self.token_use_today)


def _info_fields(body: dict[str, object]) -> TokenInfo | None:
    """The quota fields at the top level of ``body`` or under ``data``."""
    candidates: list[object] = [body]
    data = body.get("data")
    candidates.append(data[0] if isinstance(data, list) and data else data)
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue
        limit = _as_int(candidate.get("token_limit"))
        used = _as_int(candidate.get("token_use_today"))
        if limit is not None and used is not None and limit >= 0 and used >= 0:
            return TokenInfo(token_limit=limit, token_use_today=used)
    return None


def parse_token_info(response: HttpResponse) -> TokenInfo:
    """Read a ``token_info`` answer; raise :class:`TokenInfoError` if it has no quota.

    Accepts ``token_limit`` and ``token_use_today`` as ints or numeric strings,
    at the top level of the JSON object or under ``data`` (an object, or a
    list whose first item is one).
    """
    status = response.status
    body, problem = _parse_body(response.body)
    if body is None:
        raise TokenInfoError(f"token_info: {problem}: HTTP {status}", http_status=status)
    code = _as_int(body.get("code"))
    text = one_line(body.get("error")) or one_line(body.get("msg")) or ""
    if not 200 <= status <= 299 or (code is not None and not 200 <= code <= 299):
        shown = code if code is not None else status
        raise TokenInfoError(
            f"token_info: HTTP {status}, code {shown}: {text}".rstrip(": "),
            http_status=status,
            code=code,
        )
    info = _info_fields(body)
    if info is None:
        raise TokenInfoError(
            "token_info: no token_limit/token_use_today in answer", http_status=status, code=code
        )
    return info


def _redact_answer(answer: Answer, token: str) -> Answer:
    """``answer`` with the token masked in its texts, should a server echo it back."""
    msg, error = answer.msg, answer.error
    if not token or ((msg is None or token not in msg) and (error is None or token not in error)):
        return answer
    return replace(
        answer,
        msg=None if answer.msg is None else redact(answer.msg, token),
        error=None if answer.error is None else redact(answer.error, token),
    )


class WolkvoxClient:
    """Makes wolkvox calls through a :data:`Transport` and judges the answers."""

    def __init__(self, transport: Transport, base_url: str) -> None:
        self._transport = transport
        self._base_url = base_url

    async def clear(self, clear: Clear, token: Secret) -> Answer:
        """Send one ``clear_campaign`` call and return its judged :class:`Answer`.

        A call that got no HTTP answer is a RETRY whose ``outcome_unknown`` says
        whether it may have reached wolkvox. Cancellation propagates.
        """
        request = HttpRequest(
            method="DELETE",
            url=build_url(self._base_url, clear),
            token=token,
            timeout_s=clear.timeout_s,
        )
        try:
            response = await self._transport(request)
        except TransportError as exc:
            error = one_line(redact(str(exc), token.reveal()), MAX_ERROR_CHARS) or "transport error"
            return Answer(Verdict.RETRY, error=error, outcome_unknown=exc.outcome_unknown)
        return _redact_answer(classify(response), token.reveal())

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
            return parse_token_info(response)
        except TokenInfoError as exc:
            if secret and secret in str(exc):
                raise TokenInfoError(
                    redact(str(exc), secret), http_status=exc.http_status, code=exc.code
                ) from None
            raise
