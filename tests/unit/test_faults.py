"""The simulator's staged faults: each one's answer as wolkvox gives it, and a run against some."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sim_thread import running_simulator

from orchestrator.cli.commands import _parser, main
from orchestrator.plan.model import token_fingerprint
from orchestrator.wolkvox.faults import Faults, FaultSpec, combined, parse_fault
from orchestrator.wolkvox.simulator import Simulator, SimulatorConfig

TOKEN = "tok-alpha-secret"
OTHER_TOKEN = "tok-beta-secret"
Start = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start simulators with the given faults (latency 0); stop them afterwards."""
    running: list[Simulator] = []

    async def _start(seed: int | None = None, **faults: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(latency_ms=0, seed=seed, faults=Faults(**faults)))
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
    campaign_id: str = "123",
    *,
    token: str = TOKEN,
    server: str = "0014",
    timeout_s: float | None = None,
) -> tuple[int, Any]:
    """One clear; the body as JSON when it is JSON, else as text."""
    query = {"api": "clear_campaign", "type_campaign": "predictive", "campaign_id": campaign_id}
    url = f"{sim.url}/wv{server}/api/v2/campaign.php"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with http.delete(
        url, params=query, headers={"wolkvox-token": token}, timeout=timeout
    ) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


async def token_info(http: aiohttp.ClientSession, sim: Simulator, token: str = TOKEN) -> Any:
    url = f"{sim.url}/wv0014/api/v2/information.php"
    headers = {"wolkvox-token": token}
    async with http.get(url, params={"api": "token_info"}, headers=headers) as resp:
        return resp.status, await resp.json()


def forbidden(detail: str) -> dict[str, Any]:
    """wolkvox's 403: the status name in ``error``, the detail in ``msg``."""
    return {"code": 403, "error": "FORBIDDEN", "msg": detail}


def campaign(campaign_id: str, times: int | None = None) -> FaultSpec:
    return FaultSpec(campaigns=((campaign_id, times),))


# -- parsing the options ---------------------------------------------------------


def test_a_fault_is_a_rate_or_a_campaign_with_an_optional_count() -> None:
    assert parse_fault("0.25") == FaultSpec(rate=0.25)
    assert parse_fault("campaign=03001") == campaign("3001")
    assert parse_fault("campaign=3001:2") == campaign("3001", 2)
    assert combined([parse_fault("0.1"), parse_fault("campaign=7"), parse_fault("0.3")]) == (
        FaultSpec(rate=0.3, campaigns=(("7", None),))
    )
    assert combined(None) == FaultSpec()


@pytest.mark.parametrize(
    "text", ["1.5", "-0.1", "nan", "lots", "campaign=", "campaign=x1", "campaign=5:0"]
)
def test_a_fault_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fault(text)


def test_every_simulate_option_has_one_line_of_help() -> None:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    simulate = commands.choices["simulate"]
    options = {o: a.help for a in simulate._actions for o in a.option_strings if o != "-h"}
    faults = {"--token-rejected", "--quota-spent", "--maintenance", "--simultaneous"}
    faults |= {"--slow", "--drop", "--burst-5xx", "--seed", "--slow-s", "--burst-length"}
    assert faults <= set(options)
    assert all(text and "\n" not in text for text in options.values()), options


def test_a_bad_fault_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--maintenance", "campaign=x"])
    assert stopped.value.code == 2
    assert "campaign id must be digits" in capsys.readouterr().err


# -- each fault's answer -----------------------------------------------------------


async def test_a_rejected_token_stays_rejected(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(token_rejected=campaign("123", 1))
    assert await clear(http, sim) == (403, forbidden("PLEASE VALIDATE TOKEN"))
    # Like a deleted token: every later call of it is refused, on any campaign.
    assert await clear(http, sim, "456") == (403, forbidden("PLEASE VALIDATE TOKEN"))
    assert (await token_info(http, sim))[0] == 403
    assert (await clear(http, sim, token=OTHER_TOKEN, campaign_id="456"))[0] == 200
    assert sim.stats()["faults"] == {"token_rejected": 1}


async def test_a_spent_quota_refuses_clears_and_shows_in_token_info(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(quota_spent=campaign("123"))
    assert await clear(http, sim) == (403, forbidden("TOKEN LIMIT EXCEEDED"))
    assert await clear(http, sim, "456") == (403, forbidden("TOKEN LIMIT EXCEEDED"))
    status, body = await token_info(http, sim)
    assert (status, body["code"]) == (200, "200")
    (record,) = body["data"]
    assert (record["token_limit"], record["token_use_today"]) == ("1,000,000", "1,000,000")
    assert record["available_consumption_options"] == "0"


async def test_maintenance_is_a_403_that_says_so_on_every_api(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(maintenance=FaultSpec(rate=1.0))
    status, body = await clear(http, sim)
    assert (status, body["code"], body["error"]) == (403, 403, "FORBIDDEN")
    assert "MAINTENANCE" in body["msg"]
    status, body = await token_info(http, sim)
    assert (status, body["error"]) == (403, "FORBIDDEN") and "MAINTENANCE" in body["msg"]
    assert set(sim.records("0014", "predictive", "123").values()) == {100}


async def test_the_staged_simultaneous_answer_is_wolkvoxs_and_not_counted_as_an_overlap(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(simultaneous=campaign("123", 2))
    busy = forbidden("EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN")
    assert [await clear(http, sim) for _ in range(2)] == [(403, busy), (403, busy)]
    assert (await clear(http, sim))[0] == 200  # campaign=123:2 hits its first two calls only
    stats = sim.stats()
    assert (stats["simultaneous_rejections"], stats["faults"]) == (0, {"simultaneous": 2})


async def test_a_slow_answer_keeps_the_token_busy_after_the_client_gave_up(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(slow=campaign("123", 1), slow_s=30.0)
    with pytest.raises(TimeoutError):
        await clear(http, sim, timeout_s=0.2)
    # wolkvox is still working on the first call: the token is busy.
    assert await clear(http, sim, "456") == (
        403,
        forbidden("EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN"),
    )
    assert set(sim.records("0014", "predictive", "123").values()) == {100}  # not yet done


async def test_a_dropped_connection_gets_no_answer_but_the_clear_is_done(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(drop=FaultSpec(rate=1.0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await clear(http, sim)
    assert set(sim.records("0014", "predictive", "123").values()) == {0}
    assert {call.status for call in sim.calls} == {0}  # no answer was written
    assert sim.stats()["statuses"] == {}


async def test_a_5xx_burst_hits_the_servers_next_calls_whatever_their_token(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(burst=campaign("123", 1), burst_length=4)
    answers = [
        await clear(http, sim),
        await clear(http, sim, "456", token=OTHER_TOKEN),
        await clear(http, sim, "789"),
    ]
    assert (await clear(http, sim, "5", server="0038"))[0] == 200  # another server
    answers.append(await clear(http, sim, "456"))
    assert all(500 <= status <= 599 for status, _ in answers), answers
    from_wolkvox = [(status, body) for status, body in answers if isinstance(body, dict)]
    pages = [body for _, body in answers if isinstance(body, str)]
    assert from_wolkvox and all(body["code"] == status for status, body in from_wolkvox)
    assert pages and all(page.startswith("<html>") for page in pages)  # a proxy's page
    assert (await clear(http, sim, "456"))[0] == 200  # the burst is over
    assert sim.stats()["faults"] == {"burst": 4}


async def test_fault_rates_repeat_with_a_seed(start: Start, http: aiohttp.ClientSession) -> None:
    async def statuses() -> list[int]:
        sim = await start(seed=11, simultaneous=FaultSpec(rate=0.5))
        return [(await clear(http, sim))[0] for _ in range(16)]

    first = await statuses()
    assert first == await statuses()
    assert set(first) == {200, 403}


async def test_reset_forgets_sticky_faults(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(token_rejected=campaign("123", 1))
    assert (await clear(http, sim))[0] == 403
    sim.reset()
    assert (await clear(http, sim, "456"))[0] == 200
    assert sim.stats()["calls_per_token"] == {token_fingerprint(TOKEN): 1}


# -- a run against them ----------------------------------------------------------------

PLAN = """\
version: 1
settings: {{base_url: "{base_url}", cooldown_s: 0}}
defaults: {{server: 0014, token_env: T_MAIN, type_campaign: predictive}}
campaigns:
  - {{campaign_id: 3001, results: all}}
  - {{campaign_id: 3002, results: all}}
  - {{campaign_id: 4001, server: 0038, token_env: T_OPS, results: [failed]}}
"""


@pytest.fixture
def plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], str]:
    monkeypatch.setenv("T_MAIN", TOKEN)
    monkeypatch.setenv("T_OPS", OTHER_TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))

    def write(base_url: str) -> str:
        path = tmp_path / "plan.yaml"
        path.write_text(PLAN.format(base_url=base_url))
        return str(path)

    return write


def test_a_run_skips_the_lane_of_a_rejected_token(
    plan: Callable[[str], str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    faults = Faults(token_rejected=campaign("3001"))
    with running_simulator(latency_ms=1, faults=faults) as sim:
        code = main(
            ["run", plan(sim.base_url), "--yes", "--log-format", "json", "--report", str(report)]
        )
        cleared = sim.simulator.records("0038", "predictive", "4001")["failed"]
    assert code == 1
    clears = json.loads(report.read_text())["clears"]
    assert [(c["outcome"], c["reason"]) for c in clears] == [
        ("failed", "token_rejected"),
        ("skipped", "token_rejected"),
        ("succeeded", None),
    ]
    assert cleared == 0


def test_a_quota_spent_mid_run_ends_that_lane_only(
    plan: Callable[[str], str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    faults = Faults(quota_spent=campaign("3002"))
    with running_simulator(latency_ms=1, faults=faults) as sim:
        code = main(
            ["run", plan(sim.base_url), "--yes", "--log-format", "json", "--report", str(report)]
        )
    assert code == 1
    clears = json.loads(report.read_text())["clears"]
    assert [(c["outcome"], c["reason"]) for c in clears] == [
        ("succeeded", None),
        ("failed", "token_quota_exhausted"),
        ("succeeded", None),
    ]


def test_check_quota_refuses_a_run_whose_token_is_spent(
    plan: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    faults = Faults(quota_spent=FaultSpec(rate=1.0))
    with running_simulator(latency_ms=1, faults=faults) as sim:
        code = main(["run", plan(sim.base_url), "--yes", "--log-format", "json", "--check-quota"])
        apis = {call.api for call in sim.simulator.calls}
    assert code == 2
    assert apis == {"token_info"}  # nothing cleared
    err = capsys.readouterr().err
    assert "not enough calls left today" in err and "NOT ENOUGH" in err


def test_the_simulate_command_stages_the_faults_it_is_given() -> None:
    command = [sys.executable, "-m", "orchestrator", "simulate", "--port", "0"]
    command += ["--latency-ms", "0", "--token-rejected", "campaign=3001", "--quota-spent", "0"]
    command += ["--burst-5xx", "campaign=77:1", "--burst-length", "2"]
    command += ["--shared-limit", "--token-limit", "5", "--seed", "3"]
    simulator = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert simulator.stderr is not None
        line = simulator.stderr.readline().decode()
        base = line.rsplit(" ", 1)[-1].strip().format(server="0014")

        def call(campaign_id: str, token: str = TOKEN) -> tuple[int, str]:
            query = f"api=clear_campaign&type_campaign=predictive&campaign_id={campaign_id}"
            request = urllib.request.Request(
                f"{base}/api/v2/campaign.php?{query}",
                method="DELETE",
                headers={"wolkvox-token": token},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        bursts = [call("77")[0], call("78")[0]]
        rejected = call("3001")
        after = [call("5", OTHER_TOKEN)[0] for _ in range(3)]
    finally:
        simulator.kill()
        simulator.wait(10)
    assert all(500 <= status <= 599 for status in bursts)
    assert rejected[0] == 403 and json.loads(rejected[1])["msg"] == "PLEASE VALIDATE TOKEN"
    # --shared-limit: the first five calls on the server, of either token, spend the limit of 5.
    assert after == [200, 200, 403]


def test_a_run_waits_out_maintenance_then_fails_a_clear_it_outlasts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    monkeypatch.setenv("T_OPS", OTHER_TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    report = tmp_path / "report.json"
    # 3001 is under maintenance for one call; 3002 for all of them.
    maintenance = FaultSpec(campaigns=(("3001", 1), ("3002", None)))
    with running_simulator(latency_ms=1, faults=Faults(maintenance=maintenance)) as sim:
        # A tiny maintenance_wait_s: each series of maintenance answers gets one short wait.
        text = (
            PLAN.format(base_url=sim.base_url)
            .replace("cooldown_s: 0}", "cooldown_s: 0, maintenance_wait_s: 0.1}")
            .replace("type_campaign: predictive}", "type_campaign: predictive, retries: 0}")
        )
        assert "maintenance_wait_s: 0.1" in text and "retries: 0" in text
        path = tmp_path / "plan.yaml"
        path.write_text(text)
        code = main(["run", str(path), "--yes", "--log-format", "json", "--report", str(report)])
    assert code == 1
    clears = json.loads(report.read_text())["clears"]
    # retries: 0, yet 3001 got a second call: a maintenance wait is not a retry.
    assert [(c["campaign_id"], c["outcome"], c["reason"], c["attempts"]) for c in clears] == [
        ("3001", "succeeded", None, 2),
        ("3002", "failed", "maintenance", 2),
        ("4001", "succeeded", None, 1),
    ]
    assert clears[1]["msg"] == "SERVICE UNDER MAINTENANCE"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rests = [line for line in lines if line["event"] == "token.resting"]
    assert [(r["campaign_id"], r["reason"], r["rest_s"], r["http_status"]) for r in rests] == [
        ("3001", "maintenance", 0.1, 403),
        ("3002", "maintenance", 0.1, 403),
    ]
    assert not [line for line in lines if line["event"] == "clear.retrying"]
