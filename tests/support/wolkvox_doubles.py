"""Doubles for the wolkvox client's tests: a token, a clear, answers, a recording transport."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.plan.model import Clear, Secret, TokenRef
from orchestrator.wolkvox.client import HttpRequest, HttpResponse

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
