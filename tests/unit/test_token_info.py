"""token_info: the quota answer as wolkvox sends it, over a fake and a real transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import pytest
from wolkvox_doubles import (
    SECRET,
    TOKEN,
    Recorder,
    assert_no_token,
    make_clear,
    response,
    wolkvox,
)

from orchestrator.errors import CallTimeout
from orchestrator.plan.model import DEFAULT_BASE_URL
from orchestrator.wolkvox.client import (
    HttpRequest,
    HttpResponse,
    TokenInfo,
    TokenInfoError,
    WolkvoxClient,
    build_url,
    parse_token_info,
    token_info_url,
)
from orchestrator.wolkvox.transport import AiohttpTransport

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
