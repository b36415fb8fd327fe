"""Token echoes: masked in any letter case and any fragment of eight or more."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.errors import ConnectionLost
from orchestrator.plan.model import DEFAULT_BASE_URL, Clear, Secret, TokenRef
from orchestrator.wolkvox.client import (
    HttpRequest,
    HttpResponse,
    TokenInfoError,
    Verdict,
    WolkvoxClient,
)
from orchestrator.wolkvox.redact import redact

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
