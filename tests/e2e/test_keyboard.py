"""At the keyboard: --version, completion, help, validate --json and the spellings of --resume."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from sim_thread import ThreadedSimulator, running_simulator

from orchestrator.cli import main

GOOD = "tok-good-0123456789"
BAD = "tok-bad-9876543210"

PLAN = """\
version: 1
settings:
  base_url: "{base_url}"
  cooldown_s: 0
defaults:
  server: "0014"
  type_campaign: predictive
campaigns:
  - campaign_id: 3001
    token_env: T_GOOD
    results: [busy]
  - campaign_id: 3002
    token_env: T_BAD
    results: all
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("T_GOOD", GOOD)
    monkeypatch.setenv("T_BAD", BAD)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    # T_BAD is rejected: its lane fails and the run stays resumable.
    with running_simulator(latency_ms=1, valid_tokens=frozenset({GOOD})) as sim:
        yield sim


def write_plan(tmp_path: Path, base_url: str, text: str = PLAN) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text.format(base_url=base_url))
    return str(path)


def run_ids(out: str) -> set[str]:
    return {json.loads(line)["run_id"] for line in out.splitlines()}


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"orchestrator {metadata.version('orchestrator')}\n"


@pytest.mark.parametrize("command", ["run", "clear"])
def test_help_lists_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "exit codes:\n  0    every clear succeeded" in out
    for code in ("1    at least one clear failed", "2    bad usage", "130  ", "143  "):
        assert f"  {code}" in out


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the command line ``words`` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
            '_orchestrator; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.split()


def test_bash_completion_offers_commands_options_and_their_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "orchestrator.bash"
    script.write_text(capsys.readouterr().out)
    (tmp_path / "nightly.yaml").write_text("")
    assert _complete(script, "orchestrator", "ru") == ["run", "runs"]
    assert _complete(script, "orchestrator", "--v") == ["--version"]
    assert _complete(script, "orchestrator", "run", "plan.yaml", "--resume-") == ["--resume-id"]
    assert _complete(script, "orchestrator", "run", "x", "--log-format", "") == [
        "auto",
        "json",
        "console",
    ]
    assert _complete(script, "orchestrator", "clear", "--type-campaign", "pre") == [
        "predictive",
        "preview",
    ]
    assert _complete(script, "orchestrator", "completion", "") == ["bash", "zsh"]
    assert _complete(script, "orchestrator", "validate", f"{tmp_path}/ni") == [
        f"{tmp_path}/nightly.yaml"
    ]
    # A value nobody can guess is not completed with an option.
    assert _complete(script, "orchestrator", "run", "x", "--base-url", "") == []


def test_zsh_completion_runs_the_same_function_through_bashcompinit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["completion", "bash"])
    bash = capsys.readouterr().out
    main(["completion", "zsh"])
    zsh = capsys.readouterr().out
    assert "autoload -U +X bashcompinit && bashcompinit\n" in zsh
    assert zsh.endswith(bash)


def test_validate_json_prints_counts_lanes_and_clears(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    assert main(["validate", plan, "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["valid"] is True and document["plan"] == plan
    assert document["counts"] == {
        "clears": 2,
        "unfiltered": 1,
        "filtered": 1,
        "campaigns": 2,
        "lanes": 2,
    }
    assert document["lanes"] == [
        {"lane": 1, "tokens": ["env:T_GOOD"], "seqs": [1]},
        {"lane": 2, "tokens": ["env:T_BAD"], "seqs": [2]},
    ]
    first, second = document["clears"]
    assert (first["campaign_id"], first["result"], first["unfiltered"]) == ("3001", "busy", False)
    assert (second["campaign_id"], second["result"], second["unfiltered"]) == ("3002", "all", True)
    assert second["token"] == "env:T_BAD" and second["line"] == 12
    assert document["warnings"] == []
    assert GOOD not in captured.out and BAD not in captured.out


def test_validate_json_reports_errors_as_json_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text("version: 1\ncampaigns:\n  - campaign_id: x1\n")
    assert main(["validate", str(plan), "--json"]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["valid"] is False and document["plan"] == str(plan)
    messages = {(e["line"], e["path"], e["message"]) for e in document["errors"]}
    assert (3, "campaigns[0].campaign_id", "expected a campaign id (1 to 20 digits), got 'x1'") in (
        messages
    )


def test_validate_json_of_an_unknown_tag_is_an_error_too(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    assert main(["validate", plan, "--json", "--tag", "weekly"]) == 2
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert "no campaign in" in error["message"] and "weekly" in error["message"]


def _failed_run(plan: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", plan, "--yes", "--log-format", "json"]) == 1
    (run_id,) = run_ids(capsys.readouterr().out)
    return run_id


def test_resume_before_the_plan_takes_the_plan_as_the_plan(
    env: None, sim: ThreadedSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, sim.base_url)
    run_id = _failed_run(plan, capsys)
    assert main(["run", "--resume", plan, "--yes", "--log-format", "json"]) == 1
    assert run_ids(capsys.readouterr().out) == {run_id}


@pytest.mark.parametrize(
    "spelling",
    [
        ["PLAN", "--resume=ID"],
        ["--resume=ID", "PLAN"],
        ["PLAN", "--resume-id", "ID"],
        ["PLAN", "--resume", "ID"],  # as before: the plan is given apart
        ["--resume", "ID", "PLAN"],
    ],
)
def test_every_spelling_of_a_run_id_resumes_that_run(
    env: None,
    sim: ThreadedSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spelling: list[str],
) -> None:
    plan = write_plan(tmp_path, sim.base_url)
    older = _failed_run(plan, capsys)
    _failed_run(plan, capsys)  # the latest: --resume alone would take this one
    args = [a.replace("PLAN", plan).replace("ID", older) for a in spelling]
    assert main(["run", *args, "--yes", "--log-format", "json"]) == 1
    assert run_ids(capsys.readouterr().out) == {older}


def test_a_run_id_without_a_plan_is_told_how_to_write_it(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--resume", "20261128T045500Z-3fa9c1", "--yes"]) == 2
    assert (
        "orchestrator: 20261128T045500Z-3fa9c1 is a run id, not a plan: "
        "orchestrator run PLAN --resume=20261128T045500Z-3fa9c1"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "run: give the plan: orchestrator run PLAN [--resume[=RUN_ID]]"),
        (["--resume"], "run: give the plan"),
        (["p.yaml", "--resume="], "--resume=: give a run id"),
        (["p.yaml", "--resume", "A", "--resume-id", "B"], "--resume A and --resume-id"),
    ],
)
def test_resume_spellings_that_cannot_be_read_exit_2(
    env: None, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["run", *args, "--yes"]) == 2
    assert message in capsys.readouterr().err


class _Terminal(io.StringIO):
    """Standard input as a terminal on which the operator types ``text``."""

    def isatty(self) -> bool:
        return True


def _clear(*args: str) -> list[str]:
    base = ["clear", "--server", "0014", "--type-campaign", "preview", "--campaign-id", "12"]
    return [*base, "--token-env", "T_GOOD", "--log-format", "json", *args]


@pytest.mark.parametrize("reflex", ["y", "yes", "delete"])
def test_a_one_off_clear_of_every_record_is_not_confirmed_by_a_reflex(
    env: None,
    sim: ThreadedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    reflex: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal(f"{reflex}\n"))
    assert main(_clear("--base-url", sim.base_url)) == 2
    err = capsys.readouterr().err
    assert "To delete EVERY record of campaign 12 on 127.0.0.1, type the campaign id (12): " in err
    assert "not confirmed; nothing was sent" in err
    assert sim.simulator.stats()["total_calls"] == 0


def test_a_one_off_clear_of_every_record_runs_once_its_id_is_typed(
    env: None,
    sim: ThreadedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal("12\n"))
    assert main(_clear("--base-url", sim.base_url)) == 0
    assert "Target: 127.0.0.1\n" in capsys.readouterr().err
    assert sim.simulator.stats()["total_calls"] == 1


def test_a_filtered_clear_keeps_y_or_n(
    env: None,
    sim: ThreadedSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    assert main(_clear("--base-url", sim.base_url, "--result", "busy")) == 0
    assert "Delete these records on 127.0.0.1? [y/N] " in capsys.readouterr().err
    assert sim.simulator.stats()["total_calls"] == 1


def test_several_campaigns_of_every_record_take_delete(
    env: None,
    sim: ThreadedSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = write_plan(tmp_path, sim.base_url, PLAN.replace("[busy]", "all"))
    monkeypatch.setattr(sys, "stdin", _Terminal("3002\n"))
    assert main(["run", plan, "--log-format", "json"]) == 2
    assert sim.simulator.stats()["total_calls"] == 0
    monkeypatch.setattr(sys, "stdin", _Terminal("delete\n"))
    assert main(["run", plan, "--log-format", "json"]) == 1  # T_BAD is rejected
    err = capsys.readouterr().err
    assert "To delete EVERY record of 2 campaigns on 127.0.0.1, type delete: " in err
    assert sim.simulator.stats()["total_calls"] == 2


def test_a_resume_prompt_lists_only_what_is_left(
    env: None,
    sim: ThreadedSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = write_plan(tmp_path, sim.base_url)
    run_id = _failed_run(plan, capsys)  # 3001 busy succeeded; 3002 (all records) failed
    monkeypatch.setattr(sys, "stdin", _Terminal("3002\n"))
    assert main(["run", plan, "--resume", "--log-format", "json"]) == 1
    err = capsys.readouterr().err
    assert f"Resuming run {run_id}: 1 of 2 clear(s) left, 1 done before.\n" in err
    assert "campaign 3002: ALL RECORDS" in err
    assert "3001" not in err.split("type the campaign id")[0]


def test_the_prompt_under_a_pseudo_terminal_names_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOLKVOX_", "T_"))}
    env["ORCHESTRATOR_STATE_DIR"] = str(tmp_path / "state")
    command = [sys.executable, "-m", "orchestrator", *_clear("--simulate")]
    command.remove("--log-format")
    command.remove("json")
    primary, secondary = pty.openpty()
    with subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, env=env
    ) as child:
        os.close(secondary)
        try:
            seen = _read_until(primary, b"type the campaign id (12): ")
            assert b"Target: simulator" in seen
            os.write(primary, b"12\n")
            seen += _read_until(primary, b"exit 0")
            assert child.wait(timeout=20) == 0
        finally:
            child.kill()
            os.close(primary)
    assert b"1 succeeded, 0 failed" in seen


def _read_until(fd: int, wanted: bytes) -> bytes:
    """Output of the pseudo-terminal ``fd`` up to ``wanted``; at most 20 s of waiting."""
    seen = b""
    deadline = time.monotonic() + 20
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"waited 20 s for {wanted!r}; saw {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_clear_speaks_of_its_options_not_of_a_plan(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one help line per option
    with pytest.raises(SystemExit):
        main(["clear", "--help"])
    help_text = capsys.readouterr().out
    assert "  2    bad usage, options or token: nothing was sent" in help_text
    assert "(default https://wv{server}.wolkvox.com)" in help_text
    assert "refuse more than N clears (one per --result)" in help_text
    assert "the plan" not in help_text and "a plan of" not in help_text
    assert main([*_clear("--type-campaign", "dialer"), "--yes"]) == 2
    assert capsys.readouterr().err == (
        "orchestrator clear: --type-campaign: 'dialer' is not a campaign type "
        "(expected one of predictive, preview)\n"
        "nothing was sent: the options have errors\n"
    )
    monkeypatch.delenv("T_GOOD")
    assert main([*_clear("--simulate"), "--dry-run"]) == 0  # needs no token
    capsys.readouterr()
    assert main([*_clear(), "--yes"]) == 2
    assert capsys.readouterr().err == (
        "orchestrator clear: --token-env: environment variable T_GOOD is not set "
        "(needed by campaign 12)\n"
        "nothing was sent: the options have errors\n"
    )
