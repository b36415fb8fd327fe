"""The real transport: wolkvox calls over one keep-alive aiohttp session.

The only module that imports aiohttp. Library errors are translated here, where
they enter, into the transport errors of :mod:`orchestrator.errors`.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from orchestrator.errors import CallTimeout, ConnectionFailed, ConnectionLost
from orchestrator.wolkvox.client import (
    MAX_BODY_BYTES,
    MAX_ERROR_CHARS,
    TOKEN_HEADER,
    HttpRequest,
    HttpResponse,
    one_line,
)
from orchestrator.wolkvox.redact import redact

#: How much of an answer is read at a time, counted after decompression.
_READ_CHUNK_BYTES = 64 * 1024


def _error_message(prefix: str, exc: BaseException, token: str) -> str:
    """A short one-line message for a library error, never containing the token."""
    detail = str(exc).strip()
    text = f"{prefix}: {type(exc).__name__}" + (f": {detail}" if detail else "")
    # Redact before cutting, so that a cut cannot leave part of a token behind.
    return one_line(redact(text, token), MAX_ERROR_CHARS) or prefix


async def _send_once(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Send ``request`` exactly once: a connection that breaks is :class:`ConnectionLost`.

    ``ClientSession._request`` in aiohttp/client.py sends an "idempotent" request
    (DELETE is one) a second time when the first ends in ``ServerDisconnectedError``
    or ``ClientOSError`` (its ``retry_persistent_connection`` loop), and the caller
    never learns of it. The first DELETE may have reached wolkvox and still be
    running: the second would be a call on a busy token that the scheduler neither
    counts nor journals. That loop catches only those two aiohttp errors, around the
    session's middlewares; raised as orchestrator's own error here, they leave the
    session at once. A connector error (nothing was sent) passes unchanged.
    """
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        token = request.headers.get(TOKEN_HEADER, "")
        raise ConnectionLost(_error_message("connection lost", exc, token)) from exc


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """The body of ``resp`` up to ``cap`` bytes, and whether it was longer.

    Read from the decompressed stream, so the cap holds for what a gzip or deflate
    answer inflates to, not only for what crossed the wire; aiohttp inflates a
    bounded amount at a time, so an answer is never inflated past the cap plus one
    chunk. An answer cut short closes its connection: the rest is left unread on it.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            resp.close()
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


class AiohttpTransport:
    """The real :data:`~orchestrator.wolkvox.client.Transport`: one keep-alive session.

    Use as ``async with AiohttpTransport(limit) as transport``. ``limit`` is the
    connector's total connection limit and must cover every lane that can be
    calling at once; there is no per-host limit, since many lanes may share a
    server. Each request leaves once (aiohttp's own resend is stopped, see
    :func:`_send_once`), redirects are never followed and answers are read up to
    ``max_body_bytes`` after decompression. Library errors become
    :class:`ConnectionFailed` (nothing sent), :class:`CallTimeout` or
    :class:`ConnectionLost` (the outcome is unknown).
    """

    def __init__(self, limit: int, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self._limit = limit
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AiohttpTransport:
        if self._session is not None:
            raise RuntimeError("AiohttpTransport is already open")
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0)
        # No cookie jar: every call stands alone, authenticated by its header only.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            middlewares=(_send_once,),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """Send ``request``; raise a :class:`TransportError` when no HTTP answer came."""
        session = self._session
        if session is None:
            raise RuntimeError("AiohttpTransport used outside 'async with'")
        token = request.token.reveal()
        try:
            async with session.request(
                request.method,
                # Encoded already: sent exactly as build_url encoded it.
                URL(request.url, encoded=True),
                headers={TOKEN_HEADER: token},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=request.timeout_s),
            ) as resp:
                body, oversized = await _read_capped(resp, self._max_body_bytes)
                # A case-insensitive mapping already: looked up by lower-case name.
                return HttpResponse(resp.status, body, resp.headers, oversized=oversized)
        except TimeoutError as exc:  # includes aiohttp's ServerTimeoutError family
            raise CallTimeout() from exc
        except aiohttp.ClientConnectorError as exc:  # nothing was sent: DNS, refused, TLS
            raise ConnectionFailed(_error_message("connection failed", exc, token)) from exc
        except aiohttp.ClientResponseError as exc:
            # Its request_info holds the request headers, token included: do not
            # chain it, so no traceback or repr of the cause can show the token.
            raise ConnectionLost(_error_message("bad answer", exc, token)) from None
        except (aiohttp.ClientError, OSError) as exc:  # the request may have been sent
            raise ConnectionLost(_error_message("connection lost", exc, token)) from exc
