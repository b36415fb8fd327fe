"""The wolkvox simulator, driven over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import aiohttp
import pytest

from orchestrator.plan.model import RESULT_FILTERS, token_fingerprint
from orchestrator.wolkvox.simulator import Simulator, SimulatorConfig, serve

TOKEN = "tok-alpha-secret"
OTHER_TOKEN = "tok-beta-secret"
Reply = tuple[int, dict[str, Any]]
Start = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start simulators on free ports (latency 0 unless asked); stop them afterwards."""
    running: list[Simulator] = []

    async def _start(**options: Any) -> Simulator:
        options.setdefault("latency_ms", 0.0)
        sim = Simulator(SimulatorConfig(**options))
        await sim.start()
        running.append(sim)
        return sim

    yield _start
    for sim in running:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def clear(
    http: aiohttp.ClientSession,
    sim: Simulator,
    *,
    token: str | None = TOKEN,
    server: str = "0014",
    method: str = "DELETE",
    **params: str,
) -> Reply:
    """Send one clear_campaign call; ``params`` override the defaults (None-free)."""
    query = {"api": "clear_campaign", "type_campaign": "predictive", "campaign_id": "123"}
    query.update(params)
    headers = {} if token is None else {"wolkvox-token": token}
    url = f"{sim.url}/wv{server}/api/v2/campaign.php"
    async with http.request(method, url, params=query, headers=headers) as resp:
        return resp.status, await resp.json()


async def token_info(http: aiohttp.ClientSession, sim: Simulator, token: str = TOKEN) -> Reply:
    url = f"{sim.url}/wv0014/api/v2/information.php"
    headers = {"wolkvox-token": token}
    async with http.get(url, params={"api": "token_info"}, headers=headers) as resp:
        return resp.status, await resp.json()


def error_body(code: int, text: str) -> dict[str, Any]:
    """wolkvox's error shape: the status name in ``error``, the detail in ``msg``."""
    return {"code": code, "error": HTTPStatus(code).phrase.upper(), "msg": text}


# -- answers -------------------------------------------------------------------


async def test_start_returns_base_url_template() -> None:
    sim = Simulator(SimulatorConfig(latency_ms=0))
    template = await sim.start()
    try:
        assert template == sim.url + "/wv{server}"
        assert sim.url.startswith("http://127.0.0.1:")
    finally:
        await sim.stop()


async def test_success_is_http_200_with_code_202_in_body(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    assert await clear(http, sim) == (
        200,
        {
            "code": 202,
            "error": None,
            "msg": "All records has been deleted of campaign_id 123 successfully",
        },
    )


async def test_code_as_string_sends_code_as_text(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(code_as_string=True)
    status, body = await clear(http, sim)
    assert (status, body["code"]) == (200, "202")


async def test_path_without_server_prefix_is_served_as_empty_server(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    params = {"api": "clear_campaign", "type_campaign": "preview", "campaign_id": "9"}
    url = f"{sim.url}/api/v2/campaign.php"
    async with http.delete(url, params=params, headers={"wolkvox-token": TOKEN}) as resp:
        assert resp.status == 200
    assert sim.calls[0].server == ""
    assert set(sim.records("", "preview", "9").values()) == {0}


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("api", ["", "clear_campaigns", None])
async def test_missing_or_unknown_api_is_400_api_does_not_exist(
    start: Start, http: aiohttp.ClientSession, api: str | None
) -> None:
    sim = await start()
    url = f"{sim.url}/wv0014/api/v2/campaign.php"
    params = {"type_campaign": "predictive", "campaign_id": "1"}
    if api is not None:
        params["api"] = api
    async with http.delete(url, params=params, headers={"wolkvox-token": TOKEN}) as resp:
        assert (resp.status, await resp.json()) == (
            400,
            error_body(400, "THE API YOU WANT TO CONSULT DOES NOT EXIST"),
        )


@pytest.mark.parametrize(
    "params", [{"type_campaign": ""}, {"campaign_id": ""}, {"type_campaign": "", "campaign_id": ""}]
)
async def test_empty_type_or_campaign_id_is_400_parameters_required(
    start: Start, http: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    sim = await start()
    assert await clear(http, sim, **params) == (
        400,
        error_body(400, "SOME PARAMETERS ARE REQUIRED"),
    )


async def test_absent_campaign_id_is_400_parameters_required(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    url = f"{sim.url}/wv0014/api/v2/campaign.php"
    params = {"api": "clear_campaign", "type_campaign": "predictive"}
    async with http.delete(url, params=params, headers={"wolkvox-token": TOKEN}) as resp:
        assert (resp.status, (await resp.json())["msg"]) == (400, "SOME PARAMETERS ARE REQUIRED")


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"type_campaign": "progressive"}, "THE TYPE_CAMPAIGN IS NOT VALID"),
        ({"type_campaign": "Predictive"}, "THE TYPE_CAMPAIGN IS NOT VALID"),
        ({"campaign_id": "12a"}, "THE CAMPAIGN_ID MUST BE NUMERIC"),
        ({"campaign_id": "-5"}, "THE CAMPAIGN_ID MUST BE NUMERIC"),
        ({"result": "hung-up"}, "THE RESULT IS NOT VALID"),
        ({"result": ""}, "THE RESULT IS NOT VALID"),
    ],
)
async def test_bad_parameter_value_is_400_and_deletes_nothing(
    start: Start, http: aiohttp.ClientSession, params: dict[str, str], error: str
) -> None:
    sim = await start()
    assert await clear(http, sim, **params) == (400, error_body(400, error))
    assert set(sim.records("0014", "predictive", "123").values()) == {100}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
async def test_method_other_than_delete_is_405(
    start: Start, http: aiohttp.ClientSession, method: str
) -> None:
    sim = await start()
    status, body = await clear(http, sim, method=method)
    assert (status, body["code"]) == (405, 405)


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_missing_or_empty_token_is_401(
    start: Start, http: aiohttp.ClientSession, token: str | None
) -> None:
    sim = await start()
    assert await clear(http, sim, token=token) == (
        401,
        error_body(401, "PLEASE ENTER THE WOLKVOX-TOKEN"),
    )


async def test_token_not_configured_is_403_validate_token(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(valid_tokens=frozenset({TOKEN}))
    assert (await clear(http, sim))[0] == 200
    assert await clear(http, sim, token=OTHER_TOKEN) == (
        403,
        error_body(403, "PLEASE VALIDATE TOKEN"),
    )


async def test_maintenance_is_403(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(maintenance=True)
    assert await clear(http, sim) == (403, error_body(403, "SERVICE UNDER MAINTENANCE"))


async def test_fail_rate_one_gives_503_and_deletes_nothing(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(fail_rate=1.0, seed=7)
    status, body = await clear(http, sim)
    assert (status, body["code"]) == (503, 503)
    assert set(sim.records("0014", "predictive", "123").values()) == {100}


async def test_fail_rate_is_reproducible_with_a_seed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    async def statuses() -> list[int]:
        sim = await start(fail_rate=0.5, seed=42)
        return [(await clear(http, sim))[0] for _ in range(12)]

    first = await statuses()
    assert first == await statuses()
    assert set(first) == {200, 503}


# -- records -------------------------------------------------------------------


async def test_clear_without_result_deletes_every_record(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    assert set(sim.records("0014", "predictive", "123").values()) == {100}
    await clear(http, sim)
    assert sim.records("0014", "predictive", "123") == dict.fromkeys(RESULT_FILTERS, 0)


async def test_clear_with_result_deletes_only_that_result(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    sim.set_records("0014", "predictive", "123", {"busy": 5, "no-answer": 7, "answer": 3})
    await clear(http, sim, result="busy")
    assert sim.records("0014", "predictive", "123") == {
        **dict.fromkeys(RESULT_FILTERS, 0),
        "no-answer": 7,
        "answer": 3,
    }


async def test_clear_leaves_other_campaigns_untouched(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(records_per_result=4)
    await clear(http, sim, server="0014", type_campaign="predictive", campaign_id="123")
    assert set(sim.records("0014", "predictive", "123").values()) == {0}
    for other in [
        ("0014", "predictive", "124"),
        ("0014", "preview", "123"),
        ("14", "predictive", "123"),  # leading zeros name a different server
        ("00014", "predictive", "123"),
    ]:
        assert set(sim.records(*other).values()) == {4}, other


async def test_server_code_keeps_leading_zeros(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start()
    await clear(http, sim, server="0007")
    assert sim.calls[0].server == "0007"
    assert set(sim.records("0007", "predictive", "123").values()) == {0}
    assert set(sim.records("7", "predictive", "123").values()) == {100}


def test_set_records_rejects_unknown_result() -> None:
    with pytest.raises(ValueError, match="unknown result"):
        Simulator().set_records("0014", "predictive", "1", {"hung-up": 3})


# -- the one-call-per-token rule -----------------------------------------------


async def test_simultaneous_calls_on_one_token_one_is_refused(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(latency_ms=200)
    replies = await asyncio.gather(clear(http, sim), clear(http, sim, campaign_id="456"))
    assert sorted(status for status, _ in replies) == [200, 403]
    refused = next(body for status, body in replies if status == 403)
    assert refused == error_body(403, "EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN")
    stats = sim.stats()
    assert stats["simultaneous_rejections"] == 1
    assert stats["max_in_flight_per_token"] == 2


async def test_sequential_calls_on_one_token_keep_max_in_flight_at_one(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(latency_ms=5)
    for campaign_id in ("1", "2", "3"):
        assert (await clear(http, sim, campaign_id=campaign_id))[0] == 200
    stats = sim.stats()
    assert (stats["max_in_flight_per_token"], stats["simultaneous_rejections"]) == (1, 0)


async def test_calls_on_different_tokens_run_in_parallel(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(latency_ms=200)
    replies = await asyncio.gather(clear(http, sim), clear(http, sim, token=OTHER_TOKEN))
    assert [status for status, _ in replies] == [200, 200]
    first, second = sorted(sim.calls, key=lambda c: c.arrived)
    assert second.arrived < first.departed  # they really overlapped
    assert sim.stats()["max_in_flight_per_token"] == 1


async def test_token_stays_busy_after_client_gives_up(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(latency_ms=300)
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.05):
            await clear(http, sim)
    status, body = await clear(http, sim)
    assert (status, body["msg"]) == (403, "EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN")


# -- quota ---------------------------------------------------------------------


async def test_quota_counts_every_call_and_refuses_past_limit(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(token_limit=3)
    assert (await clear(http, sim, campaign_id="x"))[0] == 400  # rejected, still counted
    assert (await clear(http, sim))[0] == 200
    assert (await clear(http, sim))[0] == 200
    assert await clear(http, sim) == (403, error_body(403, "TOKEN LIMIT EXCEEDED"))
    assert (await clear(http, sim, token=OTHER_TOKEN))[0] == 200  # quota is per token
    assert sim.stats()["calls_per_token"] == {
        token_fingerprint(TOKEN): 4,
        token_fingerprint(OTHER_TOKEN): 1,
    }


async def test_token_info_reports_limit_and_calls_before_this_one(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(token_limit=50)
    await clear(http, sim)
    await clear(http, sim, type_campaign="bogus")
    await clear(http, sim, token=OTHER_TOKEN)
    assert await token_info(http, sim) == (
        200,
        {
            "code": "200",
            "error": None,
            "msg": "1 records were found",
            "data": [
                {
                    "description": f"simulated token {token_fingerprint(TOKEN)}",
                    "token_limit": "50",
                    "token_use_today": "2",
                    "all_token_today": "3",
                    "available_consumption_options": "48",
                }
            ],
        },
    )
    # token_info costs a call too
    assert (await token_info(http, sim))[1]["data"][0]["token_use_today"] == "3"


# -- observation ---------------------------------------------------------------


async def test_calls_log_names_token_by_fingerprint_only(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(valid_tokens=frozenset({TOKEN}))
    await clear(http, sim, result="busy")
    (call,) = sim.calls
    assert call.token_id == token_fingerprint(TOKEN)
    assert (call.server, call.type_campaign, call.campaign_id, call.result) == (
        "0014",
        "predictive",
        "123",
        "busy",
    )
    assert call.path == "/wv0014/api/v2/campaign.php"
    assert call.status == 200
    assert call.arrived <= call.departed and call.arrived_wall <= call.departed_wall
    dumped = json.dumps(sim.stats()) + repr(sim.calls) + repr(sim.config)
    assert TOKEN not in dumped


async def test_stats_endpoint_serves_stats_without_token(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    await clear(http, sim)
    async with http.get(f"{sim.url}/_simulator/stats") as resp:
        served = await resp.json()
    assert resp.status == 200
    assert served == json.loads(json.dumps(sim.stats()))
    assert served["total_calls"] == 1
    assert served["statuses"] == {"200": 1}
    assert served["timeline"][0]["token_id"] == token_fingerprint(TOKEN)
    async with http.get(f"{sim.url}/_simulator/stats", params={"timeline": "0"}) as resp:
        assert (await resp.json())["timeline"] == []


async def test_reset_endpoint_clears_calls_stats_and_records(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(token_limit=1)
    await clear(http, sim)
    async with http.post(f"{sim.url}/_simulator/reset") as resp:
        assert resp.status == 200
    stats = sim.stats()
    assert (stats["total_calls"], stats["calls_per_token"], stats["busy_window_s"]) == (0, {}, 0.0)
    assert set(sim.records("0014", "predictive", "123").values()) == {100}
    assert (await clear(http, sim))[0] == 200  # quota use was forgotten too


async def test_busy_window_spans_first_arrival_to_last_departure(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(latency_ms=20)
    await clear(http, sim)
    await clear(http, sim)
    first, last = sim.calls
    assert sim.stats()["busy_window_s"] == pytest.approx(last.departed - first.arrived)
    assert sim.stats()["busy_window_s"] >= 0.04


async def test_connections_are_counted_per_token(start: Start) -> None:
    sim = await start()
    async with aiohttp.ClientSession() as keep_alive:
        await clear(keep_alive, sim)
        await clear(keep_alive, sim)
    for _ in range(2):
        async with aiohttp.ClientSession() as fresh:
            await clear(fresh, sim, token=OTHER_TOKEN)
    assert sim.stats()["connections_per_token"] == {
        token_fingerprint(TOKEN): 1,
        token_fingerprint(OTHER_TOKEN): 2,
    }


async def test_requests_without_token_are_counted_but_not_logged(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    await clear(http, sim, token=None)
    stats = sim.stats()
    assert (stats["total_calls"], stats["requests_without_token"]) == (0, 1)


# -- standalone ----------------------------------------------------------------


async def test_serve_runs_until_cancelled(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(SimulatorConfig(latency_ms=0), "127.0.0.1", 0, on_ready=ready.set_result)
    )
    base = await asyncio.wait_for(ready, 2)
    url = base.format(server="0014") + "/api/v2/campaign.php"
    params = {"api": "clear_campaign", "type_campaign": "preview", "campaign_id": "5"}
    async with http.delete(url, params=params, headers={"wolkvox-token": TOKEN}) as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.delete(url, params=params, headers={"wolkvox-token": TOKEN}):
            pass


def test_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        SimulatorConfig(fail_rate=1.5)
    with pytest.raises(ValueError, match="latency_ms"):
        SimulatorConfig(latency_ms=-1)
