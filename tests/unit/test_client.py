"""The wolkvox client: URLs, answer classification, and the client over a fake transport."""

from __future__ import annotations

import asyncio
import inspect
import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from wolkvox_doubles import (
    OK_BODY,
    OK_MSG,
    SECRET,
    TOKEN,
    URL_ALL,
    URL_NO_ANSWER,
    Recorder,
    assert_no_token,
    make_clear,
    response,
    wolkvox,
)

from orchestrator.errors import CallTimeout, ConnectionFailed, ConnectionLost
from orchestrator.plan.model import DEFAULT_BASE_URL
from orchestrator.run.backoff import backoff_delay
from orchestrator.wolkvox.client import (
    MAX_RETRY_AFTER_S,
    Answer,
    HttpRequest,
    HttpResponse,
    Verdict,
    WolkvoxClient,
    _parse_body,
    build_url,
    classify,
    parse_retry_after,
    token_info_url,
)

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
