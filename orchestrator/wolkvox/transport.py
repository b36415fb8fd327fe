"""The real transport: wolkvox calls over one keep-alive aiohttp session.

The only module that imports aiohttp, and only commands that send load it:
``validate`` and dry runs never pay for its import. Library errors are
translated here, where they enter.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp
from yarl import URL

from orchestrator.errors import CallTimeout, ConnectionFailed
from orchestrator.wolkvox.client import (
    MAX_BODY_BYTES,
    MAX_ERROR_CHARS,
    TOKEN_HEADER,
    HttpRequest,
    HttpResponse,
    one_line,
    redact,
)

#: asyncio's socket transports read with ``recv(256 KiB)`` and shrink the result.
_READ_BUFFER_BYTES = 256 * 1024


def _keep_read_buffers_off_mmap() -> None:
    """Let the C allocator serve asyncio's read buffers from its heap.

    Each answer is read into a fresh 256 KiB buffer. glibc maps a block that large
    with ``mmap`` until freeing such a mapped block raises its threshold; without
    that, every answer costs an ``mmap``, an ``mremap``, a ``munmap`` and page faults
    (seen with ``strace -c``: three system calls per clear). Freeing one larger block
    once raises the threshold for the rest of the process; other allocators just
    allocate and free it.
    """
    block = bytearray(_READ_BUFFER_BYTES + 64 * 1024)
    del block


#: Distinct bases a transport keeps parsed; a run has one per server.
_MAX_BASES = 256


def request_url(text: str, bases: dict[str, URL]) -> URL:
    """``text`` as the URL ``URL(text, encoded=True)`` gives, parsing its base once.

    Every clear has a URL of its own, and parsing a new one costs three times as
    much as building it from parts (yarl caches only what it has seen). All of a
    server's URLs share what comes before the query, so that part is parsed once,
    kept in ``bases``, and each URL is built from it and its raw query. A fragment
    would change where the query ends: such a URL is parsed whole.
    """
    base, mark, query = text.partition("?")
    if not mark or "#" in text:
        return URL(text, encoded=True)
    parsed = bases.get(base)
    if parsed is None:
        if len(bases) >= _MAX_BASES:
            bases.clear()
        parsed = bases[base] = URL(base, encoded=True)
    return URL.build(
        scheme=parsed.scheme,
        authority=parsed.raw_authority,
        path=parsed.raw_path,
        query_string=query,
        encoded=True,
    )


def _error_message(prefix: str, exc: BaseException, token: str) -> str:
    """A short one-line message for a library error, never containing the token."""
    detail = str(exc).strip()
    text = f"{prefix}: {type(exc).__name__}" + (f": {detail}" if detail else "")
    # Redact before cutting, so that a cut cannot leave half a token behind.
    return one_line(redact(text, token), MAX_ERROR_CHARS) or prefix


class AiohttpTransport:
    """The real :data:`Transport`: one keep-alive aiohttp session for the whole run.

    Use as ``async with AiohttpTransport(limit) as transport``. ``limit`` is the
    connector's total connection limit and must cover every lane that can be
    calling at once; there is no per-host limit, since many lanes may share a
    server. Redirects are never followed and bodies are read up to
    ``max_body_bytes``. Library errors become :class:`CallTimeout` or
    :class:`ConnectionFailed`.
    """

    def __init__(self, limit: int, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self._limit = limit
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        # A run has few distinct timeouts: build each once.
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._bases: dict[str, URL] = {}

    async def __aenter__(self) -> AiohttpTransport:
        if self._session is not None:
            raise RuntimeError("AiohttpTransport is already open")
        _keep_read_buffers_off_mmap()
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0)
        # No cookie jar: every call stands alone, authenticated by its header only.
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """Send ``request``; raise :class:`TransportError` when no HTTP answer came."""
        session = self._session
        if session is None:
            raise RuntimeError("AiohttpTransport used outside 'async with'")
        token = request.token.reveal()
        # Encoded already: sent exactly as build_url encoded it.
        url = request_url(request.url, self._bases)
        timeout = self._timeouts.get(request.timeout_s)
        if timeout is None:
            timeout = self._timeouts[request.timeout_s] = aiohttp.ClientTimeout(
                total=request.timeout_s
            )
        try:
            async with session.request(
                request.method,
                url,
                headers={TOKEN_HEADER: token},
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                length = resp.content_length
                if length is not None and length <= self._max_body_bytes:
                    # The parser reads exactly Content-Length bytes: no cap to enforce.
                    body = await resp.read()
                else:
                    body = await self._read_capped(resp)
                # A case-insensitive mapping already: no copy per answer.
                return HttpResponse(resp.status, body, resp.headers)
        except TimeoutError as exc:  # includes aiohttp's ServerTimeoutError family
            raise CallTimeout() from exc
        except aiohttp.ClientConnectorError as exc:  # nothing was sent: DNS, refused, TLS
            message = _error_message("connection failed", exc, token)
            raise ConnectionFailed(message, outcome_unknown=False) from exc
        except aiohttp.ClientResponseError as exc:
            # Its request_info holds the request headers, token included: do not
            # chain it, so no traceback or repr of the cause can show the token.
            message = _error_message("bad answer", exc, token)
            raise ConnectionFailed(message, outcome_unknown=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # the request may have been sent
            message = _error_message("connection lost", exc, token)
            raise ConnectionFailed(message, outcome_unknown=True) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body of an answer without a Content-Length within the cap, cut at
        ``max_body_bytes``; a cut closes the connection."""
        cap = self._max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            chunks.append(chunk[: cap - size])
            size += len(chunks[-1])
            if size >= cap:
                # Unread data is left on the socket: it cannot be reused.
                resp.close()
                break
        return b"".join(chunks)
