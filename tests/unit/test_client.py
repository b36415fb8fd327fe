"""The wolkvox client: URLs, answer classification, the aiohttp transport, token_info."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import json
import socket
import socketserver
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from orchestrator.cli import main
from orchestrator.errors import CallTimeout, ConnectionFailed, ConnectionLost, OutcomeUnknown
from orchestrator.plan.model import DEFAULT_BASE_URL, Clear, Secret, TokenRef
from orchestrator.run.backoff import backoff_delay
from orchestrator.wolkvox.client import (
    MAX_BODY_BYTES,
    MAX_RETRY_AFTER_S,
    TOKEN_HEADER,
    Answer,
    HttpRequest,
    HttpResponse,
    TokenInfo,
    TokenInfoError,
    Verdict,
    WolkvoxClient,
    _parse_body,
    build_url,
    classify,
    parse_retry_after,
    parse_token_info,
    token_info_url,
)
from orchestrator.wolkvox.redact import redact
from orchestrator.wolkvox.transport import AiohttpTransport

TOKEN = "tk-9f8e7d6c5b4a-SECRET"
SECRET = Secret(TOKEN)
URL_ALL = (
    "https://wv0014.wolkvox.com/api/v2/campaign.php"
    "?api=clear_campaign&type_campaign=predictive&campaign_id=123"
)
URL_NO_ANSWER = URL_ALL + "&result=no-answer"
OK_MSG = "All records has been deleted of campaign_id 123 successfully"
OK_BODY = {"code": 202, "error": None, "msg": OK_MSG}


def make_clear(**changes: Any) -> Clear:
    values: dict[str, Any] = {
        "seq": 1,
        "server": "0014",
        "type_campaign": "predictive",
        "campaign_id": "123",
        "result": None,
        "token": TokenRef("env", "WOLKVOX_TOKEN"),
        "timeout_s": 5.0,
    }
    values.update(changes)
    return Clear(**values)


def response(status: int, body: object, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, raw, headers or {})


def wolkvox(code: object, error: object = None, msg: object = None) -> dict[str, object]:
    return {"code": code, "error": error, "msg": msg}


def assert_no_token(*values: object) -> None:
    for value in values:
        assert TOKEN not in repr(value)
        assert TOKEN not in str(value)


@dataclass
class Recorder:
    """A fake transport that records requests and answers from a queue."""

    answers: list[HttpResponse | Exception] = field(default_factory=list)
    requests: list[HttpRequest] = field(default_factory=list)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else response(200, OK_BODY)
        if isinstance(answer, Exception):
            raise answer
        return answer


# ---------------------------------------------------------------------- URLs


def test_url_without_result_has_no_result_parameter() -> None:
    assert build_url(DEFAULT_BASE_URL, make_clear()) == URL_ALL


def test_url_with_result_appends_it_last() -> None:
    assert build_url(DEFAULT_BASE_URL, make_clear(result="no-answer")) == URL_NO_ANSWER


def test_url_keeps_leading_zeros_of_server_and_campaign() -> None:
    url = build_url(DEFAULT_BASE_URL, make_clear(server="0001", campaign_id="007"))
    assert url.startswith("https://wv0001.wolkvox.com/")
    assert url.endswith("&campaign_id=007")


def test_url_with_server_in_path() -> None:
    url = build_url("http://127.0.0.1:8080/wv{server}", make_clear(type_campaign="preview"))
    assert url == (
        "http://127.0.0.1:8080/wv0014/api/v2/campaign.php"
        "?api=clear_campaign&type_campaign=preview&campaign_id=123"
    )


def test_url_without_server_placeholder_and_trailing_slash() -> None:
    url = build_url("http://localhost:9000/", make_clear())
    assert url.startswith("http://localhost:9000/api/v2/campaign.php?api=clear_campaign&")


def test_url_encodes_query_values() -> None:
    url = build_url(DEFAULT_BASE_URL, make_clear(campaign_id="1 2&x=y"))
    assert url.endswith("&campaign_id=1%202%26x%3Dy")


@pytest.mark.parametrize("server", ["evil.example#", "evil.example/", "x@evil.example", "a:1"])
def test_malformed_server_cannot_move_the_host(server: str) -> None:
    host = urlsplit(build_url(DEFAULT_BASE_URL, make_clear(server=server))).hostname
    assert host is not None and host.endswith(".wolkvox.com")


def test_token_info_url() -> None:
    assert token_info_url(DEFAULT_BASE_URL, "0014") == (
        "https://wv0014.wolkvox.com/api/v2/information.php?api=token_info"
    )


# ------------------------------------------------------------------ classify


def test_success_with_int_code() -> None:
    answer = classify(response(200, OK_BODY))
    assert answer == Answer(Verdict.SUCCEEDED, 200, 202, OK_MSG, None)


def test_success_with_string_code() -> None:
    assert classify(response(200, wolkvox("202", msg="ok"))).verdict is Verdict.SUCCEEDED


def test_success_with_empty_error() -> None:
    answer = classify(response(200, wolkvox(202, error="", msg="ok")))
    assert (answer.verdict, answer.error) == (Verdict.SUCCEEDED, None)


def test_success_without_error_key() -> None:
    assert classify(response(202, {"code": 200, "msg": "ok"})).verdict is Verdict.SUCCEEDED


@pytest.mark.parametrize("status", [408, 429, 500, 503, 599])
@pytest.mark.parametrize(
    "body",
    [
        wolkvox(202, msg="ok"),
        wolkvox("202", msg="All records has been deleted"),
        wolkvox(400, error="SOME PARAMETERS ARE REQUIRED"),
        wolkvox(403, error="TOKEN LIMIT EXCEEDED"),
        wolkvox(401, error="PLEASE VALIDATE TOKEN"),
    ],
)
def test_a_retryable_http_status_is_retried_whatever_the_body_says(
    status: int, body: dict[str, object]
) -> None:
    answer = classify(response(status, body))
    assert (answer.verdict, answer.http_status) == (Verdict.RETRY, status)


def test_2xx_with_error_set_is_failed() -> None:
    answer = classify(response(200, wolkvox(202, error="partial delete", msg="x")))
    assert (answer.verdict, answer.code, answer.error) == (Verdict.FAILED, 202, "partial delete")


def test_http_200_with_body_403_token_limit_is_quota_exhausted() -> None:
    answer = classify(response(200, wolkvox(403, error="TOKEN LIMIT EXCEEDED")))
    assert (answer.verdict, answer.http_status, answer.code) == (
        Verdict.QUOTA_EXHAUSTED,
        200,
        403,
    )


def test_quota_text_may_arrive_in_msg() -> None:
    answer = classify(response(403, wolkvox("403", msg="token limit exceeded")))
    assert answer.verdict is Verdict.QUOTA_EXHAUSTED


def test_simultaneous_requests_is_retry_not_quota() -> None:
    body = wolkvox(403, error="EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN")
    assert classify(response(200, body)).verdict is Verdict.RETRY


def test_validate_token_is_token_rejected() -> None:
    answer = classify(response(403, wolkvox(403, msg="PLEASE VALIDATE TOKEN")))
    assert answer.verdict is Verdict.TOKEN_REJECTED


def test_401_is_token_rejected() -> None:
    answer = classify(response(401, wolkvox(401, error="PLEASE ENTER THE WOLKVOX-TOKEN")))
    assert (answer.verdict, answer.code) == (Verdict.TOKEN_REJECTED, 401)


def test_http_401_without_json_is_token_rejected() -> None:
    assert classify(response(401, b"Unauthorized")).verdict is Verdict.TOKEN_REJECTED


@pytest.mark.parametrize(
    "body",
    [
        wolkvox(403, msg="Server under maintenance"),
        wolkvox(403, error="FORBIDDEN", msg="SERVICE UNDER MAINTENANCE"),
        wolkvox("403", error="Maintenance window: backups"),
    ],
    ids=["msg", "as the simulator says it", "string code, in error"],
)
def test_403_maintenance_is_waited_out_not_failed(body: dict[str, object]) -> None:
    answer = classify(response(403, body))
    assert (answer.verdict, answer.http_status) == (Verdict.MAINTENANCE, 403)


def test_only_a_403_that_speaks_of_maintenance_is_maintenance() -> None:
    plain = classify(response(403, wolkvox(403, msg="ACCESS DENIED")))
    busy = classify(response(503, wolkvox(503, msg="SERVICE UNDER MAINTENANCE")))
    bad = classify(response(400, wolkvox(400, msg="maintenance")))
    assert (plain.verdict, busy.verdict, bad.verdict) == (
        Verdict.FAILED,
        Verdict.RETRY,
        Verdict.FAILED,
    )


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_http_status_without_json(status: int) -> None:
    answer = classify(response(status, b"<html>busy</html>"))
    assert (answer.verdict, answer.code) == (Verdict.RETRY, status)
    assert answer.error == f"unreadable body: HTTP {status}"


@pytest.mark.parametrize("code", [408, 429, "500", 503])
def test_retryable_body_code_in_http_200(code: object) -> None:
    assert classify(response(200, wolkvox(code, error="x"))).verdict is Verdict.RETRY


def test_body_code_decides_when_the_http_status_asks_for_no_retry() -> None:
    answer = classify(response(400, wolkvox(403, error="TOKEN LIMIT EXCEEDED")))
    assert (answer.verdict, answer.code, answer.http_status) == (
        Verdict.QUOTA_EXHAUSTED,
        403,
        400,
    )


def test_http_status_is_used_when_body_has_no_code() -> None:
    answer = classify(response(503, {"msg": "down"}))
    assert (answer.verdict, answer.code, answer.msg) == (Verdict.RETRY, 503, "down")


@pytest.mark.parametrize(
    "body",
    [
        wolkvox(400, error="THE API YOU WANT TO CONSULT DOES NOT EXIST"),
        wolkvox(400, msg="SOME PARAMETERS ARE REQUIRED"),
        wolkvox(404, msg="not found"),
    ],
)
def test_other_4xx_is_failed(body: dict[str, object]) -> None:
    assert classify(response(200, body)).verdict is Verdict.FAILED


def test_2xx_non_json_is_failed() -> None:
    answer = classify(response(200, b"<html>ok</html>"))
    assert (answer.verdict, answer.code, answer.error) == (
        Verdict.FAILED,
        200,
        "unreadable body: HTTP 200",
    )


def test_2xx_invalid_utf8_is_failed() -> None:
    assert classify(response(200, b"\xff\xfe\xfa{")).verdict is Verdict.FAILED


@pytest.mark.parametrize(
    "raw",
    [
        b'{"code":200,"error":null,"msg":"ok"}',
        b'{"code": 200, "msg": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"}',
        b' {"code": 200}',  # whitespace around: the full parser's job
        b'{"code": 200}\n',
        b'\xef\xbb\xbf{"code": 200}',  # a UTF-8 byte order mark
        '{"code": 200, "msg": "utf-16"}'.encode("utf-16-le"),
        b'{"code": 200}{"code": 500}',  # two objects
        b'{"code": 200} }',
        b'{"a": {"b": [1, 2.5, true, null]}}',
        b'{"code": 200, "msg": "\xed\xa0\x80"}',  # a lone surrogate, as bytes
        b"{" * 50_000 + b"}" * 50_000,  # too deep for the C scanner
        b"{}",
        b"{",
        b"}",
    ],
)
def test_a_body_parses_exactly_as_json_loads_parses_it(raw: bytes) -> None:
    try:
        expected: object = json.loads(raw)
    except (ValueError, RecursionError):
        expected = "unreadable body"
    body, problem = _parse_body(raw)
    assert (body if problem is None else problem) == expected


def test_2xx_empty_body_is_failed() -> None:
    answer = classify(response(200, b""))
    assert (answer.verdict, answer.error) == (Verdict.FAILED, "empty body: HTTP 200")


def test_2xx_json_list_is_failed() -> None:
    answer = classify(response(200, [OK_BODY]))
    assert answer.verdict is Verdict.FAILED
    assert answer.error is not None and "not an object" in answer.error


def test_2xx_without_code_is_failed() -> None:
    answer = classify(response(200, {"error": None, "msg": "done"}))
    assert (answer.verdict, answer.error) == (Verdict.FAILED, "no usable code in body: HTTP 200")


@pytest.mark.parametrize("code", ["ok", True, None, "20 2", 202.5])
def test_2xx_with_unusable_code_is_failed(code: object) -> None:
    assert classify(response(200, wolkvox(code, msg="done"))).verdict is Verdict.FAILED


def test_integral_float_code_is_usable() -> None:
    assert classify(response(200, wolkvox(202.0))).verdict is Verdict.SUCCEEDED


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_3xx_is_failed_even_with_a_success_body(status: int) -> None:
    answer = classify(response(status, OK_BODY, {"location": "https://elsewhere.example/"}))
    assert (answer.verdict, answer.error) == (
        Verdict.FAILED,
        f"redirect not followed: HTTP {status}",
    )


def test_long_text_is_truncated() -> None:
    answer = classify(response(200, wolkvox(400, error="E" * 5000, msg="M" * 5000)))
    assert answer.msg is not None and answer.error is not None
    assert len(answer.msg) == 500 and len(answer.error) == 500


def test_non_string_text_is_coerced() -> None:
    answer = classify(response(200, wolkvox(400, error={"why": 1}, msg=42)))
    assert (answer.msg, answer.error) == ("42", "{'why': 1}")


def test_control_characters_are_blanked() -> None:
    answer = classify(response(200, wolkvox(202, msg="ok\x1b[2J\nnext")))
    assert answer.msg == "ok [2J next"


def test_retry_after_seconds() -> None:
    answer = classify(response(429, b"", {"retry-after": "45"}))
    assert (answer.verdict, answer.retry_after_s, answer.retry_after_capped) == (
        Verdict.RETRY,
        45.0,
        False,
    )


@pytest.mark.parametrize(
    "value",
    [
        "61",
        "31536000",  # a year
        "Thu, 01 Jan 2099 00:00:00 GMT",
        "9" * 20,
        "9" * 400,  # beyond a float: infinite, still capped
    ],
)
def test_retry_after_beyond_the_backoff_cap_is_capped_and_says_so(value: str) -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    answer = classify(response(503, b"", {"retry-after": value}), now=now)
    assert (answer.verdict, answer.retry_after_s, answer.retry_after_capped) == (
        Verdict.RETRY,
        MAX_RETRY_AFTER_S,
        True,
    )


def test_retry_after_cap_is_the_backoff_cap() -> None:
    cap = inspect.signature(backoff_delay).parameters["cap_s"].default
    assert cap == MAX_RETRY_AFTER_S
    # What the scheduler waits at most for a server that asks for a year.
    asked = classify(response(429, b"", {"retry-after": "31536000"})).retry_after_s
    assert backoff_delay(1, retry_after_s=asked, rand=lambda: 1.0) == cap


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    answer = classify(response(503, b"", headers), now=now)
    assert (answer.retry_after_s, answer.retry_after_capped) == (60.0, False)


def test_retry_after_date_in_the_past_is_zero() -> None:
    now = datetime(2020, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "1e400", "nan", "", "Mon, 99 Foo 2015"])
def test_invalid_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_header_name_case_is_tolerated() -> None:
    answer = classify(response(429, b"", {"Retry-After": "7"}))
    assert answer.retry_after_s == 7.0


def test_no_retry_after_header_gives_none() -> None:
    assert classify(response(503, b"")).retry_after_s is None


# ------------------------------------------------------------ client (fake)


async def test_client_builds_a_delete_request_with_the_clear_timeout() -> None:
    transport = Recorder()
    await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(timeout_s=12.5), SECRET)
    assert transport.requests == [HttpRequest("DELETE", URL_ALL, SECRET, 12.5)]


async def test_client_classifies_the_response() -> None:
    transport = Recorder([response(200, wolkvox(403, error="TOKEN LIMIT EXCEEDED"))])
    answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert answer.verdict is Verdict.QUOTA_EXHAUSTED


async def test_client_turns_a_timeout_into_retry_with_unknown_outcome() -> None:
    transport = Recorder([CallTimeout()])
    answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert answer == Answer(Verdict.RETRY, error="timeout", outcome_unknown=True)


async def test_client_keeps_a_known_outcome_of_a_failed_connection() -> None:
    transport = Recorder([ConnectionFailed("connection failed: refused")])
    answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert (answer.verdict, answer.outcome_unknown) == (Verdict.RETRY, False)


async def test_the_error_class_not_its_text_says_the_outcome_is_unknown() -> None:
    # The text of a lost connection read as a refused one, and the reverse: the class decides.
    transport = Recorder(
        [ConnectionLost("connection failed: refused"), ConnectionFailed("timeout")]
    )
    client = WolkvoxClient(transport, DEFAULT_BASE_URL)
    lost = await client.clear(make_clear(), SECRET)
    refused = await client.clear(make_clear(), SECRET)
    assert (lost.outcome_unknown, refused.outcome_unknown) == (True, False)


async def test_client_masks_a_token_echoed_by_the_server() -> None:
    body = wolkvox(403, error=f"PLEASE VALIDATE TOKEN {TOKEN}", msg=f"token {TOKEN}")
    transport = Recorder([response(200, body)])
    answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert answer.verdict is Verdict.TOKEN_REJECTED
    assert_no_token(answer)


async def test_client_masks_a_token_in_a_transport_error() -> None:
    transport = Recorder([ConnectionLost(f"lost {TOKEN}")])
    answer = await WolkvoxClient(transport, DEFAULT_BASE_URL).clear(make_clear(), SECRET)
    assert_no_token(answer)


async def test_client_does_not_swallow_cancellation() -> None:
    entered = asyncio.Event()

    async def hang(request: HttpRequest) -> HttpResponse:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(WolkvoxClient(hang, DEFAULT_BASE_URL).clear(make_clear(), SECRET))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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


# ---------------------------------------------------------------- token_info


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "token_limit": 5000, "token_use_today": 120},
        {"code": "200", "data": {"token_limit": "5000", "token_use_today": "120"}},
        {"data": [{"token_limit": 5000, "token_use_today": "120"}]},
        {"token_limit": 5000.0, "token_use_today": 120, "error": None},
    ],
)
def test_token_info_variants_parse(body: dict[str, object]) -> None:
    assert parse_token_info(response(200, body)) == TokenInfo(5000, 120)


def test_token_info_remaining_never_negative() -> None:
    assert TokenInfo(100, 130).remaining == 0


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200},
        {"data": "nothing"},
    ],
)
def test_token_info_without_usable_fields_is_an_error(body: dict[str, object]) -> None:
    with pytest.raises(TokenInfoError, match="no token_limit"):
        parse_token_info(response(200, body))


def test_token_info_http_error_is_an_error() -> None:
    with pytest.raises(TokenInfoError) as caught:
        parse_token_info(response(401, wolkvox(401, error="PLEASE ENTER THE WOLKVOX-TOKEN")))
    assert (caught.value.http_status, caught.value.code) == (401, 401)


def test_token_info_body_error_code_is_an_error() -> None:
    with pytest.raises(TokenInfoError, match="TOKEN LIMIT EXCEEDED") as caught:
        parse_token_info(response(200, wolkvox(403, error="TOKEN LIMIT EXCEEDED")))
    assert caught.value.code == 403


def test_token_info_non_json_is_an_error() -> None:
    with pytest.raises(TokenInfoError, match="unreadable body: HTTP 200"):
        parse_token_info(response(200, b"<html>"))


async def test_token_info_sends_a_get_to_the_information_api() -> None:
    transport = Recorder([response(200, {"token_limit": 10, "token_use_today": 3})])
    info = await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)
    assert info == TokenInfo(10, 3)
    assert transport.requests == [
        HttpRequest("GET", token_info_url(DEFAULT_BASE_URL, "0014"), SECRET, 4.0)
    ]


async def test_token_info_over_aiohttp(transport: AiohttpTransport) -> None:
    url = token_info_url(DEFAULT_BASE_URL, "0014")
    with mock_http() as mocked:
        mocked.get(url, payload={"data": {"token_limit": 10, "token_use_today": 3}})
        info = await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)
        method, _, kwargs = only_call(mocked)
    assert (info, method, kwargs["headers"]) == (TokenInfo(10, 3), "GET", {TOKEN_HEADER: TOKEN})


async def test_token_info_transport_error_is_a_token_info_error() -> None:
    transport = Recorder([CallTimeout()])
    with pytest.raises(TokenInfoError, match="token_info: timeout"):
        await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)


async def test_token_info_error_masks_an_echoed_token() -> None:
    transport = Recorder([response(403, wolkvox(403, error=f"PLEASE VALIDATE TOKEN {TOKEN}"))])
    with pytest.raises(TokenInfoError) as caught:
        await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)
    assert_no_token(caught.value)


def test_transport_satisfies_the_transport_type() -> None:
    sender: Callable[[HttpRequest], Awaitable[HttpResponse]] = AiohttpTransport(1)
    assert callable(sender)


@pytest.mark.parametrize(
    "value", ["3001", "no-answer", "0014", "a_b.c~d", "", "1 2&x=y", "a/b", "evil.com#", "é", "%41"]
)
def test_url_values_are_encoded_exactly_as_quote_would(value: str) -> None:
    url = build_url(DEFAULT_BASE_URL, make_clear(campaign_id=value, result=value))
    assert url.endswith(f"&campaign_id={quote(value, safe='')}&result={quote(value, safe='')}")


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


# ------------------------------------------------------------ token redaction


def assert_no_fragment(text: str | None) -> None:
    """No run of 8 characters of the token, in any letter case, is left in ``text``."""
    if text is None:
        return
    folded = text.lower()
    token = TOKEN.lower()
    for start in range(len(token) - 7):
        assert token[start : start + 8] not in folded, text


@pytest.mark.parametrize(
    "echo",
    [
        TOKEN,
        TOKEN.upper(),
        TOKEN.swapcase(),
        TOKEN[:-1],  # one character short
        TOKEN[1:],
        TOKEN[5:13],  # any 8 characters of it
        f"x{TOKEN.upper()[3:]}y",
    ],
)
def test_redact_masks_the_token_in_any_case_and_any_fragment_of_eight(echo: str) -> None:
    text = f"PLEASE VALIDATE TOKEN {echo} (code 403)"
    masked = redact(text, TOKEN)
    assert_no_fragment(masked)
    assert masked.startswith("PLEASE VALIDATE TOKEN ")
    assert masked.endswith(" (code 403)")
    assert "[token]" in masked


def test_redact_leaves_text_without_a_fragment_of_eight_alone() -> None:
    text = f"campaign 123 deleted, ref {TOKEN[:7]}"
    assert redact(text, TOKEN) == text


def test_redact_masks_a_short_token_whole_in_any_case() -> None:
    assert redact("bad token AbC1 here", "abc1") == "bad token [token] here"


def test_redact_masks_two_echoes_apart() -> None:
    masked = redact(f"{TOKEN} and {TOKEN.upper()[:-2]}", TOKEN)
    assert masked == "[token] and [token]"


@pytest.mark.parametrize("echo", [TOKEN.upper(), TOKEN[:-1], TOKEN.swapcase()[2:12]])
async def test_client_masks_a_changed_echo_of_the_token(echo: str) -> None:
    body = wolkvox(403, error=f"PLEASE VALIDATE TOKEN {echo}", msg=f"token was {echo}.")
    transport = Recorder([response(200, body), ConnectionLost(f"connection lost: {echo}")])
    client = WolkvoxClient(transport, DEFAULT_BASE_URL)
    rejected = await client.clear(make_clear(), SECRET)
    lost = await client.clear(make_clear(), SECRET)
    assert rejected.verdict is Verdict.TOKEN_REJECTED
    for text in (rejected.msg, rejected.error, lost.error):
        assert_no_fragment(text)


async def test_token_info_error_masks_a_changed_echo_of_the_token() -> None:
    echo = TOKEN.upper()[:-1]
    transport = Recorder([response(403, wolkvox(403, error=f"PLEASE VALIDATE TOKEN {echo}"))])
    with pytest.raises(TokenInfoError) as caught:
        await WolkvoxClient(transport, DEFAULT_BASE_URL).token_info("0014", SECRET, 4.0)
    assert_no_fragment(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


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
