"""The aiohttp transport: the request as sent, one DELETE per attempt, bounded answers."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import socketserver
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from wolkvox_doubles import (
    OK_BODY,
    OK_MSG,
    SECRET,
    TOKEN,
    URL_ALL,
    URL_NO_ANSWER,
    assert_no_token,
    make_clear,
)
from yarl import URL

from orchestrator.cli import main
from orchestrator.errors import CallTimeout, ConnectionFailed, ConnectionLost, OutcomeUnknown
from orchestrator.plan.model import DEFAULT_BASE_URL, Clear
from orchestrator.wolkvox.client import (
    MAX_BODY_BYTES,
    TOKEN_HEADER,
    Answer,
    HttpRequest,
    HttpResponse,
    TokenInfo,
    Verdict,
    WolkvoxClient,
    build_url,
    classify,
    token_info_url,
)
from orchestrator.wolkvox.transport import AiohttpTransport

# --------------------------------------------------- transport (aioresponses)


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` that
    aiohttp 3.14 requires (pnuckowski/aioresponses#289); supply a stand-in."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@contextmanager
def mock_http() -> Iterator[aioresponses]:
    """aioresponses, with responses built by :class:`_CompatResponse`."""
    with patch("aioresponses.core.ClientResponse", _CompatResponse), aioresponses() as m:
        yield m


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(4) as t:
        yield t


def only_call(mocked: aioresponses) -> tuple[str, URL, dict[str, Any]]:
    """The single request aioresponses saw: method, URL (query sorted), kwargs."""
    [((method, url), calls)] = mocked.requests.items()
    [call] = calls
    return method, url, call.kwargs


async def test_transport_sends_delete_with_token_header(transport: AiohttpTransport) -> None:
    client = WolkvoxClient(transport, DEFAULT_BASE_URL)
    with mock_http() as mocked:
        mocked.delete(URL_ALL, payload=OK_BODY)
        answer = await client.clear(make_clear(), SECRET)
        method, _, kwargs = only_call(mocked)
    assert answer.verdict is Verdict.SUCCEEDED
    assert method == "DELETE"
    assert kwargs["headers"] == {TOKEN_HEADER: TOKEN}


async def test_transport_uses_the_clear_timeout(transport: AiohttpTransport) -> None:
    client = WolkvoxClient(transport, DEFAULT_BASE_URL)
    with mock_http() as mocked:
        mocked.delete(URL_ALL, payload=OK_BODY)
        await client.clear(make_clear(timeout_s=7.0), SECRET)
        _, _, kwargs = only_call(mocked)
    assert kwargs["timeout"] == aiohttp.ClientTimeout(total=7.0)


@pytest.mark.parametrize(
    ("template", "clear", "expected"),
    [
        (DEFAULT_BASE_URL, make_clear(), URL_ALL),
        (DEFAULT_BASE_URL, make_clear(result="no-answer"), URL_NO_ANSWER),
        (
            "http://127.0.0.1:8080/wv{server}",
            make_clear(server="0001"),
            "http://127.0.0.1:8080/wv0001/api/v2/campaign.php"
            "?api=clear_campaign&type_campaign=predictive&campaign_id=123",
        ),
        (
            "http://sim.local/",
            make_clear(result="answer"),
            "http://sim.local/api/v2/campaign.php"
            "?api=clear_campaign&type_campaign=predictive&campaign_id=123&result=answer",
        ),
    ],
)
async def test_transport_requests_the_built_url(
    transport: AiohttpTransport, template: str, clear: Clear, expected: str
) -> None:
    with mock_http() as mocked:
        mocked.delete(expected, payload=OK_BODY)
        answer = await WolkvoxClient(transport, template).clear(clear, SECRET)
        _, url, _ = only_call(mocked)
    assert answer.verdict is Verdict.SUCCEEDED
    assert url == URL(expected).with_query(sorted(URL(expected).query.items()))


async def test_transport_does_not_follow_redirects(transport: AiohttpTransport) -> None:
    client = WolkvoxClient(transport, DEFAULT_BASE_URL)
    with mock_http() as mocked:
        mocked.delete(URL_ALL, status=302, headers={"Location": "https://elsewhere.example/x"})
        mocked.get("https://elsewhere.example/x", payload=OK_BODY)
        mocked.delete("https://elsewhere.example/x", payload=OK_BODY)
        answer = await client.clear(make_clear(), SECRET)
        hosts = {url.host for _, url in mocked.requests}
        _, _, kwargs = only_call(mocked)
    assert (answer.verdict, answer.http_status) == (Verdict.FAILED, 302)
    assert hosts == {"wv0014.wolkvox.com"}
    assert kwargs["allow_redirects"] is False


async def test_transport_returns_lower_cased_headers(transport: AiohttpTransport) -> None:
    with mock_http() as mocked:
        mocked.delete(URL_ALL, status=429, body=b"", headers={"Retry-After": "9"})
        answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert (answer.verdict, answer.retry_after_s) == (Verdict.RETRY, 9.0)


async def test_transport_cuts_the_body_at_the_cap() -> None:
    body = json.dumps({**OK_BODY, "msg": "x" * 5000}).encode()
    request = HttpRequest("DELETE", URL_ALL, SECRET, 5.0)
    async with AiohttpTransport(1, max_body_bytes=1024) as small:
        with mock_http() as mocked:
            mocked.delete(URL_ALL, body=body)
            got = await small(request)
    assert (got.body, got.oversized) == (body[:1024], True)
    answer = classify(got)
    assert (answer.verdict, answer.error) == (
        Verdict.FAILED,
        "answer longer than 1024 bytes, not read: HTTP 200",
    )


async def test_transport_reads_a_body_under_the_cap_whole(transport: AiohttpTransport) -> None:
    with mock_http() as mocked:
        mocked.delete(URL_ALL, payload=OK_BODY)
        got = await transport(HttpRequest("DELETE", URL_ALL, SECRET, 5.0))
    assert (json.loads(got.body), got.oversized) == (OK_BODY, False)


def dns_error() -> aiohttp.ClientConnectorDNSError:
    key = ConnectionKey("wv0014.wolkvox.com", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))


def bad_answer_error() -> aiohttp.ClientResponseError:
    headers = CIMultiDictProxy(CIMultiDict({TOKEN_HEADER: TOKEN}))
    info = RequestInfo(URL(URL_ALL), "DELETE", headers)
    return aiohttp.ClientResponseError(info, (), status=400, message="Invalid status line")


@pytest.mark.parametrize(
    ("make_error", "outcome_unknown", "prefix"),
    [
        (asyncio.TimeoutError, True, "timeout"),
        (aiohttp.ServerTimeoutError, True, "timeout"),
        (dns_error, False, "connection failed: ClientConnectorDNSError"),
        (aiohttp.ServerDisconnectedError, True, "connection lost: ServerDisconnectedError"),
        (lambda: aiohttp.ClientPayloadError("cut"), True, "connection lost: ClientPayloadError"),
        (lambda: aiohttp.ClientOSError(104, "reset"), True, "connection lost: ClientOSError"),
        (aiohttp.ClientError, True, "connection lost: ClientError"),
        (bad_answer_error, True, "bad answer: ClientResponseError"),
    ],
)
async def test_library_errors_become_retry_answers(
    transport: AiohttpTransport,
    make_error: Callable[[], Exception],
    outcome_unknown: bool,
    prefix: str,
) -> None:
    with mock_http() as mocked:
        mocked.delete(URL_ALL, exception=make_error())
        answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert (answer.verdict, answer.outcome_unknown) == (Verdict.RETRY, outcome_unknown)
    assert answer.error is not None and answer.error.startswith(prefix)
    assert_no_token(answer)
    with mock_http() as mocked:
        mocked.delete(URL_ALL, exception=make_error())
        with pytest.raises(OutcomeUnknown if outcome_unknown else ConnectionFailed):
            await transport(HttpRequest("DELETE", URL_ALL, SECRET, 5.0))


async def test_library_timeout_is_translated_with_its_cause(transport: AiohttpTransport) -> None:
    with mock_http() as mocked:
        mocked.delete(URL_ALL, exception=TimeoutError())
        with pytest.raises(CallTimeout) as caught:
            await transport(HttpRequest("DELETE", URL_ALL, SECRET, 5.0))
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_bad_answer_error_is_not_chained(transport: AiohttpTransport) -> None:
    # The aiohttp error carries the request headers, and so the token.
    with mock_http() as mocked:
        mocked.delete(URL_ALL, exception=bad_answer_error())
        with pytest.raises(ConnectionLost) as caught:
            await transport(HttpRequest("DELETE", URL_ALL, SECRET, 5.0))
    assert caught.value.__cause__ is None
    assert_no_token(caught.value)


async def test_transport_outside_its_context_is_refused() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await AiohttpTransport(1)(HttpRequest("DELETE", URL_ALL, SECRET, 5.0))


def test_transport_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        AiohttpTransport(0)


async def test_transport_closes_its_session_on_exit() -> None:
    async with AiohttpTransport(2) as t:
        session = t._session
    assert session is not None and session.closed


# ---------------------------------------------------------- real HTTP server


@dataclass
class Sim:
    """A local wolkvox stand-in: /wv0099 never answers, /wv0777 sends 1 MiB + 10 bytes,
    /wv0302 redirects to /wv0014, every other path answers success."""

    base_url: str
    seen: list[web.Request] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    never = asyncio.Event()  # never set: the hanging handler waits until cancelled
    state = Sim(base_url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        state.seen.append(request)
        assert request.transport is not None
        state.peers.append(request.transport.get_extra_info("peername"))
        if request.path.startswith("/wv0099/"):
            await never.wait()
        if request.path.startswith("/wv0777/"):
            return web.Response(body=b"x" * (MAX_BODY_BYTES + 10))
        if request.path.startswith("/wv0302/"):
            target = request.raw_path.replace("/wv0302/", "/wv0014/", 1)
            raise web.HTTPFound(target)
        return web.json_response(OK_BODY)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    # handler_cancellation: the hanging handler is cancelled when the client gives up.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base_url = f"http://{host}:{port}/wv{{server}}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_real_server_gets_the_exact_url_and_header(sim: Sim) -> None:
    async with AiohttpTransport(2) as t:
        clear = make_clear(campaign_id="00123", result="no-answer")
        answer = await WolkvoxClient(t, sim.base_url).clear(clear, SECRET)
    [request] = sim.seen
    assert answer.verdict is Verdict.SUCCEEDED
    assert request.method == "DELETE"
    assert request.raw_path == (
        "/wv0014/api/v2/campaign.php"
        "?api=clear_campaign&type_campaign=predictive&campaign_id=00123&result=no-answer"
    )
    assert request.headers[TOKEN_HEADER] == TOKEN


async def test_real_timeout_is_a_retry_with_unknown_outcome(sim: Sim) -> None:
    async with AiohttpTransport(2) as t:
        clear = make_clear(server="0099", timeout_s=0.2)
        answer = await WolkvoxClient(t, sim.base_url).clear(clear, SECRET)
    assert answer == Answer(Verdict.RETRY, error="timeout", outcome_unknown=True)


async def test_real_timeout_raises_call_timeout_from_the_transport(sim: Sim) -> None:
    url = build_url(sim.base_url, make_clear(server="0099"))
    async with AiohttpTransport(2) as t:
        with pytest.raises(CallTimeout):
            await t(HttpRequest("DELETE", url, SECRET, 0.2))


async def test_sequential_calls_reuse_one_connection(sim: Sim) -> None:
    async with AiohttpTransport(2) as t:
        client = WolkvoxClient(t, sim.base_url)
        answers = [await client.clear(make_clear(seq=n), SECRET) for n in range(3)]
    assert {a.verdict for a in answers} == {Verdict.SUCCEEDED}
    assert len(sim.peers) == 3 and len(set(sim.peers)) == 1


async def test_default_cap_keeps_the_first_mebibyte(sim: Sim) -> None:
    url = build_url(sim.base_url, make_clear(server="0777"))
    async with AiohttpTransport(2) as t:
        got = await t(HttpRequest("DELETE", url, SECRET, 5.0))
    assert (len(got.body), got.oversized) == (MAX_BODY_BYTES, True)
    assert MAX_BODY_BYTES == 1024 * 1024


async def test_a_cut_body_does_not_spoil_the_next_call(sim: Sim) -> None:
    async with AiohttpTransport(1) as t:
        client = WolkvoxClient(t, sim.base_url)
        cut = await client.clear(make_clear(server="0777"), SECRET)
        after = await client.clear(make_clear(), SECRET)
    assert (cut.verdict, after.verdict) == (Verdict.FAILED, Verdict.SUCCEEDED)


async def test_real_redirect_is_not_followed(sim: Sim) -> None:
    async with AiohttpTransport(2) as t:
        answer = await WolkvoxClient(t, sim.base_url).clear(make_clear(server="0302"), SECRET)
    assert (answer.verdict, answer.http_status) == (Verdict.FAILED, 302)
    assert [r.path for r in sim.seen] == ["/wv0302/api/v2/campaign.php"]


async def test_transport_cannot_be_opened_twice() -> None:
    async with AiohttpTransport(1) as t:
        with pytest.raises(RuntimeError, match="already open"):
            await t.__aenter__()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_refused_connection_is_a_retry_with_known_outcome() -> None:
    base = f"http://127.0.0.1:{unused_port()}/wv{{server}}"
    async with AiohttpTransport(1) as t:
        answer = await WolkvoxClient(t, base).clear(make_clear(), SECRET)
    assert (answer.verdict, answer.outcome_unknown) == (Verdict.RETRY, False)
    assert answer.error is not None and answer.error.startswith("connection failed:")
    assert_no_token(answer)


# ------------------------------------------------ one DELETE per attempt, no resend


@dataclass
class Dropper:
    """A raw HTTP server on 127.0.0.1 that reads each request and drops the connection
    for the request numbers in ``drop`` (1-based), answering success to the others
    on the same keep-alive connection."""

    drop: set[int]
    base_url: str = ""
    request_lines: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps(OK_BODY).encode()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                # Recorded before the connection drops, so the client cannot see the
                # drop before the count has the request.
                self.request_lines.append(head.split(b"\r\n", 1)[0])
                if len(self.request_lines) in self.drop:
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def dropper(drop: set[int]) -> AsyncIterator[Dropper]:
    state = Dropper(drop)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.base_url = f"http://127.0.0.1:{port}/wv{{server}}"
    async with server:
        yield state


async def test_a_connection_dropped_after_the_delete_was_read_sends_it_once() -> None:
    async with dropper({1}) as server, AiohttpTransport(1) as t:
        answer = await WolkvoxClient(t, server.base_url).clear(make_clear(), SECRET)
    assert len(server.request_lines) == 1
    assert server.request_lines[0].startswith(b"DELETE /wv0014/api/v2/campaign.php?")
    assert (answer.verdict, answer.outcome_unknown) == (Verdict.RETRY, True)
    assert answer.error is not None and answer.error.startswith("connection lost:")


async def test_a_reused_connection_dropped_after_the_delete_sends_it_once() -> None:
    # The case: a keep-alive connection that served one call breaks on the next.
    async with dropper({2}) as server, AiohttpTransport(1) as t:
        client = WolkvoxClient(t, server.base_url)
        first = await client.clear(make_clear(seq=1), SECRET)
        second = await client.clear(make_clear(seq=2), SECRET)
    assert len(server.request_lines) == 2
    assert (first.verdict, second.verdict, second.outcome_unknown) == (
        Verdict.SUCCEEDED,
        Verdict.RETRY,
        True,
    )


async def test_each_attempt_after_a_drop_is_one_request() -> None:
    # Two attempts the caller makes: two DELETEs arrive, never more.
    async with dropper({1, 2}) as server, AiohttpTransport(1) as t:
        client = WolkvoxClient(t, server.base_url)
        answers = [await client.clear(make_clear(), SECRET) for _ in range(2)]
    assert len(server.request_lines) == 2
    assert [a.outcome_unknown for a in answers] == [True, True]


async def test_the_transport_reports_a_dropped_connection_as_unknown_outcome() -> None:
    async with dropper({1}) as server, AiohttpTransport(1) as t:
        url = build_url(server.base_url, make_clear())
        with pytest.raises(ConnectionLost) as caught:
            await t(HttpRequest("DELETE", url, SECRET, 5.0))
    assert caught.value.outcome_unknown is True
    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert_no_token(caught.value)


# ---------------------------------------------------------------- gzip bombs

#: What the bomb inflates to: far beyond the cap, small on the wire.
_BOMB_INFLATED = 64 * 1024 * 1024


def _bomb(encoding: str) -> bytes:
    """``_BOMB_INFLATED`` zero bytes, gzip- or zlib-compressed (some 64 KiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(_BOMB_INFLATED // len(block))]
    return b"".join([*parts, packer.flush()])


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {encoding: _bomb(encoding) for encoding in ("gzip", "deflate")}


@contextlib.asynccontextmanager
async def bomb_server(body: bytes, encoding: str) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        # Set by hand: aiohttp sends the compressed bytes as they are, with their length.
        return web.Response(
            body=body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/wv{{server}}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compression_bomb_is_cut_at_the_cap_in_bounded_memory(
    bombs: dict[str, bytes], encoding: str
) -> None:
    assert len(bombs[encoding]) < MAX_BODY_BYTES  # under the cap on the wire
    async with bomb_server(bombs[encoding], encoding) as base_url, AiohttpTransport(1) as t:
        url = build_url(base_url, make_clear())
        tracemalloc.start()
        try:
            got = await t(HttpRequest("DELETE", url, SECRET, 30.0))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (len(got.body), got.oversized) == (MAX_BODY_BYTES, True)
    # The cap plus a few reading buffers: never the inflated 64 MiB.
    assert peak < 8 * MAX_BODY_BYTES


async def test_a_compression_bomb_fails_its_attempt_with_a_clear_reason(
    bombs: dict[str, bytes],
) -> None:
    async with bomb_server(bombs["gzip"], "gzip") as base_url, AiohttpTransport(1) as t:
        client = WolkvoxClient(t, base_url)
        bombed = await client.clear(make_clear(), SECRET)
    assert (bombed.verdict, bombed.http_status, bombed.outcome_unknown) == (
        Verdict.FAILED,
        200,
        False,
    )
    assert bombed.error == f"answer longer than {MAX_BODY_BYTES} bytes, not read: HTTP 200"


def test_an_oversized_answer_with_a_retryable_status_is_retried() -> None:
    got = HttpResponse(503, b"x" * 64, {"retry-after": "5"}, oversized=True)
    answer = classify(got)
    assert (answer.verdict, answer.retry_after_s, answer.error) == (
        Verdict.RETRY,
        5.0,
        "answer longer than 64 bytes, not read: HTTP 503",
    )


async def test_a_small_compressed_answer_is_read_whole() -> None:
    body = gzip.compress(json.dumps(OK_BODY).encode())
    async with bomb_server(body, "gzip") as base_url, AiohttpTransport(1) as t:
        answer = await WolkvoxClient(t, base_url).clear(make_clear(), SECRET)
    assert (answer.verdict, answer.msg) == (Verdict.SUCCEEDED, OK_MSG)


class _DropEveryRequest(socketserver.StreamRequestHandler):
    """Reads one request, records its request line, and drops the connection."""

    server: _DropServer

    def handle(self) -> None:
        first = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.server.request_lines.append(first.rstrip())


class _DropServer(socketserver.ThreadingTCPServer):
    """A blocking server on 127.0.0.1, in threads, for a run driven by the CLI."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DropEveryRequest)
        self.request_lines: list[bytes] = []


def test_a_run_sends_exactly_the_deletes_its_log_and_report_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    server = _DropServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\n"
        "settings:\n"
        f'  base_url: "http://127.0.0.1:{port}/wv{{server}}"\n'
        "  cooldown_s: 0\n"
        "defaults: {server: 0014, token_env: T_MAIN, type_campaign: predictive, retries: 1}\n"
        "campaigns:\n"
        "  - {campaign_id: 3001, results: all}\n"
    )
    report = tmp_path / "report.json"
    try:
        code = main(["run", str(plan), "--yes", "--log-format", "json", "--report", str(report)])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert code == 1
    # Two attempts (retries: 1), two DELETEs: aiohttp resent none of them.
    assert [line.split(b" ")[0] for line in server.request_lines] == [b"DELETE", b"DELETE"]
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    started = [e for e in events if e["event"] == "clear.started"]
    [failed] = [e for e in events if e["event"] == "clear.failed"]
    assert (len(started), failed["attempts"]) == (2, 2)
    assert str(failed["error"]).startswith("connection lost:")
    [clear] = json.loads(report.read_text())["clears"]
    assert clear["attempts"] == 2


async def test_token_info_over_aiohttp(transport: AiohttpTransport) -> None:
    url = token_info_url(DEFAULT_BASE_URL, "0014")
    with mock_http() as mocked:
        mocked.get(url, payload={"data": {"token_limit": 10, "token_use_today": 3}})
        info = await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)
        method, _, kwargs = only_call(mocked)
    assert (info, method, kwargs["headers"]) == (TokenInfo(10, 3), "GET", {TOKEN_HEADER: TOKEN})
