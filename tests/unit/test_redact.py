"""Token echoes: masked in any letter case and any fragment of eight or more."""

from __future__ import annotations

import pytest
from wolkvox_doubles import (
    SECRET,
    TOKEN,
    Recorder,
    make_clear,
    response,
    wolkvox,
)

from orchestrator.errors import ConnectionLost
from orchestrator.plan.model import DEFAULT_BASE_URL
from orchestrator.wolkvox.client import (
    TokenInfoError,
    Verdict,
    WolkvoxClient,
)
from orchestrator.wolkvox.redact import redact

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
