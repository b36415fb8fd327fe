"""The guards that refuse a run before anything is sent, at their exact edges.

Each case here was found by mutation testing: the behaviour held, but no test
would have failed had the guard been off by one or dropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_thread import running_simulator

from orchestrator.cli import main

TOKEN = "guard-token-0123456789"


def write_plan(path: Path, base_url: str, results: list[str]) -> Path:
    listed = ", ".join(results)
    path.write_text(
        "version: 1\n"
        "settings:\n"
        f"  base_url: {base_url}\n"
        "defaults:\n"
        "  server: '0014'\n"
        "  token_env: GUARD_TOKEN\n"
        "  type_campaign: predictive\n"
        "campaigns:\n"
        f"  - campaign_id: 3001\n    results: [{listed}]\n",
        encoding="utf-8",
    )
    return path


THREE = ["no-answer", "busy", "abandon"]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARD_TOKEN", TOKEN)


def run(plan: Path, tmp_path: Path, *extra: str) -> int:
    args = ["run", str(plan), "--yes", "--log-format", "json", "--state-dir", str(tmp_path)]
    return main([*args, *extra])


def test_max_clears_lets_a_plan_of_exactly_that_many_clears_run(tmp_path: Path) -> None:
    with running_simulator(latency_ms=0) as sim:
        plan = write_plan(tmp_path / "plan.yaml", sim.base_url, THREE)
        assert run(plan, tmp_path, "--max-clears", "3") == 0
        assert sim.simulator.stats()["total_calls"] == 3


def test_max_clears_refuses_one_clear_more_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_simulator(latency_ms=0) as sim:
        plan = write_plan(tmp_path / "plan.yaml", sim.base_url, THREE)
        assert run(plan, tmp_path, "--max-clears", "2") == 2
        assert sim.simulator.stats()["total_calls"] == 0
    assert "more than --max-clears 2; nothing was sent" in capsys.readouterr().err


def test_check_quota_refuses_a_run_whose_worst_case_exceeds_what_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three clears with the default three retries may cost 12 calls; the token has 5.
    with running_simulator(latency_ms=0, token_limit=5) as sim:
        plan = write_plan(tmp_path / "plan.yaml", sim.base_url, THREE)
        assert run(plan, tmp_path, "--check-quota") == 2
        calls = sim.simulator.calls
    assert [call.api for call in calls] == ["token_info"]
    assert "nothing was sent" in capsys.readouterr().err


def test_check_quota_lets_a_run_start_when_the_worst_case_fits(tmp_path: Path) -> None:
    with running_simulator(latency_ms=0, token_limit=13) as sim:
        plan = write_plan(tmp_path / "plan.yaml", sim.base_url, THREE)
        assert run(plan, tmp_path, "--check-quota") == 0
        assert [call.api for call in sim.simulator.calls].count("clear_campaign") == 3


def test_simulate_and_base_url_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "https://wv{server}.wolkvox.com", THREE)
    code = run(plan, tmp_path, "--simulate", "--base-url", "http://127.0.0.1:9")
    assert code == 2
    assert "--simulate and --base-url cannot be used together" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["evillocalhost", "notlocalhost:8080", "localhost.evil"])
def test_plain_http_to_a_host_that_merely_looks_like_localhost_is_refused(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "https://wv{server}.wolkvox.com", THREE)
    assert run(plan, tmp_path, "--base-url", f"http://{host}/wv{{server}}") == 2
    assert "would send the token in clear text" in capsys.readouterr().err


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_validate_refuses_a_base_url_that_run_could_not_send_to(
    json_output: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The host only fails at IDNA encoding, as the request would leave: run refuses it, so
    # validate must too rather than call the plan good.
    plan = write_plan(tmp_path / "plan.yaml", "https://a..b.invalid/wv{server}", THREE)
    args = ["validate", str(plan), *(["--json"] if json_output else [])]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "cannot be sent to" in (captured.out if json_output else captured.err)


@pytest.mark.parametrize("option", ["--report", "--metrics-file"])
def test_a_report_or_metrics_path_that_is_a_directory_is_refused_before_anything_is_sent(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with running_simulator(latency_ms=0) as sim:
        plan = write_plan(tmp_path / "plan.yaml", sim.base_url, THREE)
        assert run(plan, tmp_path, option, str(folder)) == 2
        assert sim.simulator.stats()["total_calls"] == 0
    assert f"{option}: {folder} is a directory" in capsys.readouterr().err
