"""The run journal: state-dir resolution, run identity, clear states, resume, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.plan.model import Clear, Lane, OnFailure, Secret, TokenRef
from orchestrator.plan.validate import load_plan
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Outcome,
    Reason,
    RestReason,
    TokenResting,
)
from orchestrator.run.prepare import RunOptions, prepare
from orchestrator.state.journal import (
    SCHEMA_VERSION,
    ClearRecord,
    Journal,
    JournalError,
    RunRecord,
    plan_digest,
    resolve_state_dir,
)
from orchestrator.wolkvox.client import Answer, Verdict

RAW_TOKEN = "wv-raw-token-value-7f3c9e1d"
OK = Answer(Verdict.SUCCEEDED, http_status=200, code=202, msg="All records has been deleted")
BUSY = Answer(
    Verdict.RETRY, http_status=403, code=403, error="EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS"
)
TIMEOUT = Answer(Verdict.RETRY, error="timeout", outcome_unknown=True)
BAD = Answer(Verdict.FAILED, http_status=400, code=400, error="SOME PARAMETERS ARE REQUIRED")
MAINTENANCE = Answer(
    Verdict.MAINTENANCE,
    http_status=403,
    code=403,
    error="FORBIDDEN",
    msg="SERVICE UNDER MAINTENANCE",
)
T0 = "2026-11-28T02:00:00Z"


def clear(seq: int, **overrides: object) -> Clear:
    fields: dict[str, object] = {
        "seq": seq,
        "server": "0014",
        "type_campaign": "predictive",
        "campaign_id": str(3000 + seq),
        "result": "busy",
        "token": TokenRef("env", "WOLKVOX_TOKEN"),
    }
    fields.update(overrides)
    return Clear(**fields)  # type: ignore[arg-type]


def lane(token: str, *clears: Clear) -> Lane:
    secret = Secret(token)
    return Lane(secret.token_id, (f"env:{token}",), secret, clears)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def lanes() -> list[Lane]:
    """Token A runs clears 1 and 3, token B clear 2 (seqs interleave across lanes)."""
    return [lane(RAW_TOKEN, clear(1), clear(3, result=None)), lane("token-b", clear(2))]


def started(lane_: Lane, index: int, attempt: int = 1) -> ClearStarted:
    return ClearStarted(lane_.clears[index], lane_.token_id, attempt)


def retrying(lane_: Lane, index: int, answer: Answer, attempt: int = 1) -> ClearRetrying:
    return ClearRetrying(lane_.clears[index], lane_.token_id, attempt, 1.0, answer)


def finished(
    lane_: Lane,
    index: int,
    outcome: Outcome,
    reason: Reason | None = None,
    answer: Answer | None = None,
    attempts: int = 1,
) -> ClearFinished:
    return ClearFinished(lane_.clears[index], lane_.token_id, outcome, reason, attempts, answer, 7)


def begin(journal: Journal, lanes: list[Lane], run_id: str = "r1", started_at: str = T0) -> None:
    journal.begin_run(
        run_id, "plans/nightly.yaml", plan_digest(lanes), lanes, started_at=started_at
    )


def state_of(journal: Journal, run_id: str, seq: int) -> ClearRecord:
    return next(record for record in journal.clears(run_id) if record.seq == seq)


# ------------------------------------------------------------------ state directory


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        ("/cli", {"ORCHESTRATOR_STATE_DIR": "/env", "XDG_STATE_HOME": "/xdg"}, "/cli"),
        (None, {"ORCHESTRATOR_STATE_DIR": "/env", "XDG_STATE_HOME": "/xdg"}, "/env"),
        (None, {"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/orchestrator"),
        (None, {"HOME": "/home/u"}, "/home/u/.local/state/orchestrator"),
        # Empty counts as unset; a relative XDG_STATE_HOME is invalid per the XDG spec.
        (
            "",
            {"ORCHESTRATOR_STATE_DIR": "", "XDG_STATE_HOME": "rel", "HOME": "/h"},
            "/h/.local/state/orchestrator",
        ),
        (None, {"ORCHESTRATOR_STATE_DIR": "~/state", "HOME": "/home/u"}, "/home/u/state"),
    ],
)
def test_state_dir_resolution_order(
    cli: str | None, environ: dict[str, str], expected: str
) -> None:
    assert resolve_state_dir(cli, environ) == Path(expected)


# ------------------------------------------------------------------------ digest


def test_digest_is_stable_and_ignores_lane_grouping_and_token_names(lanes: list[Lane]) -> None:
    regrouped = [
        Lane(lanes[1].token_id, ("file:/other",), None, lanes[1].clears),
        Lane(lanes[0].token_id, (), None, tuple(reversed(lanes[0].clears))),
    ]
    assert plan_digest(lanes) == plan_digest(lanes)
    assert plan_digest(regrouped) == plan_digest(lanes)
    assert len(plan_digest(lanes)) == 64


def test_digest_ignores_tags_and_source_lines(lanes: list[Lane]) -> None:
    moved = [
        dataclasses.replace(
            lane_, clears=tuple(dataclasses.replace(c, tags=("x",), line=99) for c in lane_.clears)
        )
        for lane_ in lanes
    ]
    assert plan_digest(moved) == plan_digest(lanes)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 9},
        {"server": "0015"},
        {"type_campaign": "preview"},
        {"campaign_id": "9999"},
        {"result": "answer"},
        {"result": None},
        {"on_failure": OnFailure.CONTINUE},
        {"retries": 4},
        {"timeout_s": 30.0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_digest_changes_with_each_field(change: dict[str, object]) -> None:
    base = [lane(RAW_TOKEN, clear(1))]
    changed = [lane(RAW_TOKEN, dataclasses.replace(clear(1), **change))]  # type: ignore[arg-type]
    assert plan_digest(changed) != plan_digest(base)


def test_digest_ignores_token_values_and_their_fingerprints() -> None:
    # A rotated token: the plan names the same variable, which now holds another value.
    before = [lane(RAW_TOKEN, clear(1), clear(2))]
    rotated = [lane("wv-new-token-value-after-rotation", clear(1), clear(2))]
    assert before[0].token_id != rotated[0].token_id
    assert plan_digest(rotated) == plan_digest(before)


@pytest.mark.parametrize(
    "ref",
    [
        TokenRef("env", "OTHER_TOKEN"),
        TokenRef("file", "/run/secrets/wolkvox"),
        TokenRef("file", "WOLKVOX_TOKEN"),
    ],
    ids=["env-name", "file-path", "env-to-file"],
)
def test_digest_changes_with_the_token_reference(ref: TokenRef) -> None:
    base = [lane(RAW_TOKEN, clear(1))]
    moved = [lane(RAW_TOKEN, clear(1, token=ref))]
    assert plan_digest(moved) != plan_digest(base)


def test_digest_treats_integral_timeout_as_float() -> None:
    as_int = [lane(RAW_TOKEN, clear(1, timeout_s=90))]
    assert plan_digest(as_int) == plan_digest([lane(RAW_TOKEN, clear(1, timeout_s=90.0))])


# --------------------------------------------------------------------- round trip


def test_begin_listener_finish_round_trip(journal: Journal, lanes: list[Lane]) -> None:
    a, b = lanes
    begin(journal, lanes)
    listen = journal.listener("r1")
    for event in (
        started(a, 0),
        finished(a, 0, Outcome.SUCCEEDED, answer=OK),
        started(b, 0),
        retrying(b, 0, BUSY),
        started(b, 0, attempt=2),
        finished(b, 0, Outcome.FAILED, Reason.REJECTED, BAD, attempts=2),
        finished(a, 1, Outcome.SKIPPED, Reason.INTERRUPTED, attempts=0),
    ):
        listen(event)
    journal.finish_run("r1", exit_code=130, finished_at="2026-11-28T02:05:00Z")

    assert journal.run("r1") == RunRecord(
        "r1", "plans/nightly.yaml", plan_digest(lanes), T0, "2026-11-28T02:05:00Z", 130, False
    )
    ok_msg = "All records has been deleted"
    # seq, token_id, server, type_campaign, campaign_id, result, state, attempts,
    # http_status, code, msg, error, reason
    assert journal.clears("r1") == [
        ClearRecord(1, a.token_id, "0014", "predictive", "3001", "busy", "succeeded", 1,
                    200, 202, ok_msg, None, None),
        ClearRecord(2, b.token_id, "0014", "predictive", "3002", "busy", "failed", 2,
                    400, 400, None, "SOME PARAMETERS ARE REQUIRED", "rejected"),
        ClearRecord(3, a.token_id, "0014", "predictive", "3003", "all", "skipped", 0,
                    None, None, None, None, "interrupted"),
    ]  # fmt: skip


def test_begin_run_marks_every_clear_pending(journal: Journal, lanes: list[Lane]) -> None:
    begin(journal, lanes)
    assert [(r.seq, r.state, r.attempts) for r in journal.clears("r1")] == [
        (1, "pending", 0),
        (2, "pending", 0),
        (3, "pending", 0),
    ]
    assert journal.run("r1") == RunRecord(
        "r1", "plans/nightly.yaml", plan_digest(lanes), T0, None, None, False
    )


def test_in_flight_is_committed_before_the_listener_returns(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    journal.listener("r1")(started(lanes[0], 0))
    # Another connection sees only committed data: what a resumed process would see.
    other = sqlite3.connect(journal.path)
    try:
        row = other.execute("SELECT state, attempts FROM clears WHERE seq = 1").fetchone()
    finally:
        other.close()
    assert row == ("in_flight", 1)


def test_the_journal_is_in_wal_mode_with_synchronous_normal(journal: Journal) -> None:
    assert journal._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert journal._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


def test_each_change_is_one_transaction_committed_before_the_listener_returns(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    listen = journal.listener("r1")
    seen = []
    for event, state in (
        (started(lanes[1], 0), "in_flight"),
        (retrying(lanes[1], 0, BUSY), "pending"),
        (started(lanes[1], 0, attempt=2), "in_flight"),
        (finished(lanes[1], 0, Outcome.SUCCEEDED, answer=OK, attempts=2), "succeeded"),
    ):
        listen(event)
        seen.append(committed_states(journal)[2])
        assert seen[-1] == state
    transactions = [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")]
    assert transactions == ["BEGIN IMMEDIATE", "COMMIT"] * 4


def test_in_flight_survives_a_sigkill_of_the_process(tmp_path: Path) -> None:
    script = sigkilled_script(
        tmp_path,
        """
        record(ClearStarted(clear, "tok", 1))
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    with Journal.open(tmp_path) as journal:
        record = journal.resume_run("r1")[1]
    assert (record.state, record.attempts) == ("in_flight", 1)


def test_an_attempt_with_a_rotated_token_names_the_new_token(
    journal: Journal, lanes: list[Lane]
) -> None:
    a = lanes[0]
    begin(journal, lanes)
    rotated = lane("wv-new-token-value-after-rotation", *a.clears)
    listen = journal.listener("r1")
    listen(started(a, 0))
    listen(finished(a, 0, Outcome.SUCCEEDED, answer=OK))
    listen(started(rotated, 1))
    listen(finished(rotated, 1, Outcome.SUCCEEDED, answer=OK))
    assert [(r.seq, r.token_id) for r in journal.clears("r1")] == [
        (1, a.token_id),
        (2, lanes[1].token_id),
        (3, rotated.token_id),
    ]
    assert journal.calls_per_token("r1") == {
        a.token_id: 1,
        rotated.token_id: 1,
        lanes[1].token_id: 0,
    }


def test_retry_after_unknown_outcome_stays_in_flight(journal: Journal, lanes: list[Lane]) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    listen(retrying(lanes[0], 0, TIMEOUT))
    record = state_of(journal, "r1", 1)
    assert (record.state, record.error) == ("in_flight", "timeout")


def test_retry_after_a_known_answer_goes_back_to_pending(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    listen(retrying(lanes[0], 0, BUSY))
    record = state_of(journal, "r1", 1)
    assert (record.state, record.http_status, record.code) == ("pending", 403, 403)


def test_a_maintenance_wait_records_its_answer_and_the_clear_back_to_pending(
    journal: Journal, lanes: list[Lane]
) -> None:
    # wolkvox did nothing: a crash during the wait must not make a resume rest the token.
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    until = datetime(2026, 12, 4, 2, 11, tzinfo=UTC)
    clear = lanes[0].clears[0]
    listen(TokenResting(clear, lanes[0].token_id, RestReason.MAINTENANCE, 60, until, MAINTENANCE))
    record = state_of(journal, "r1", 1)
    assert (record.state, record.http_status, record.msg) == (
        "pending",
        403,
        "SERVICE UNDER MAINTENANCE",
    )
    # A resumed run's rest comes with no answer and changes no clear.
    listen(started(lanes[0], 0))
    listen(TokenResting(clear, lanes[0].token_id, RestReason.IN_FLIGHT_AT_RESUME, 60, until))
    assert state_of(journal, "r1", 1).state == "in_flight"


def test_no_token_value_reaches_the_database_file(journal: Journal, lanes: list[Lane]) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    listen(finished(lanes[0], 0, Outcome.SUCCEEDED, answer=OK))
    journal.finish_run("r1", exit_code=0, finished_at=T0)
    files = [journal.path, *journal.path.parent.glob("journal.sqlite3-*")]
    content = b"".join(p.read_bytes() for p in files)
    assert lanes[0].token_id.encode() in content  # the fingerprint is there, so we read the data
    assert RAW_TOKEN.encode() not in content


# ------------------------------------------------------------------------ resume


def test_already_succeeded_does_not_overwrite_the_succeeded_row(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    listen(finished(lanes[0], 0, Outcome.SUCCEEDED, answer=OK))
    journal.finish_run("r1", exit_code=1, finished_at=T0)
    before = state_of(journal, "r1", 1)

    journal.resume_run("r1")
    listen(finished(lanes[0], 0, Outcome.SKIPPED, Reason("already_succeeded"), attempts=0))

    assert state_of(journal, "r1", 1) == before
    assert before.state == "succeeded"


@pytest.mark.parametrize("exit_code", [None, 1, 130], ids=["unfinished", "failed", "signalled"])
def test_find_resumable_picks_latest_unfinished_or_failed_run_of_the_digest(
    journal: Journal, lanes: list[Lane], exit_code: int | None
) -> None:
    begin(journal, lanes, "older", "2026-11-26T02:00:00Z")  # crashed, never finished
    begin(journal, lanes, "latest", "2026-11-27T02:00:00Z")
    if exit_code is not None:
        journal.finish_run("latest", exit_code=exit_code, finished_at="2026-11-27T03:00:00Z")
    begin(journal, lanes, "succeeded", "2026-11-28T02:00:00Z")
    journal.finish_run("succeeded", exit_code=0, finished_at="2026-11-28T03:00:00Z")
    begin(journal, [lane("token-c", clear(7))], "other-plan", "2026-11-29T02:00:00Z")

    found = journal.find_resumable(plan_digest(lanes))

    assert found is not None and found.run_id == "latest"


def test_find_resumable_ignores_succeeded_runs_and_other_digests(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes, "ok")
    journal.finish_run("ok", exit_code=0, finished_at=T0)
    begin(journal, [lane("token-c", clear(7))], "other-plan")
    assert journal.find_resumable(plan_digest(lanes)) is None


def test_find_resumable_ignores_dry_runs(journal: Journal, lanes: list[Lane]) -> None:
    journal.begin_run("dry", "p.yaml", plan_digest(lanes), lanes, started_at=T0, dry_run=True)
    assert journal.find_resumable(plan_digest(lanes)) is None
    dry = journal.run("dry")
    assert dry is not None and dry.dry_run


def test_find_resumable_by_run_id_returns_it_whatever_the_digest(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes, "ok")
    journal.finish_run("ok", exit_code=0, finished_at=T0)
    found = journal.find_resumable("another digest", run_id="ok")
    assert found is not None and (found.run_id, found.exit_code) == ("ok", 0)
    assert journal.find_resumable(plan_digest(lanes), run_id="missing") is None


def test_resume_run_reopens_the_run_and_returns_prior_states(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    listen(finished(lanes[0], 0, Outcome.SUCCEEDED, answer=OK))
    listen(started(lanes[1], 0))  # the process dies with this call in flight
    journal.finish_run("r1", exit_code=1, finished_at="2026-11-28T02:05:00Z")

    prior = journal.resume_run("r1")

    assert {seq: record.state for seq, record in prior.items()} == {
        1: "succeeded",
        2: "in_flight",
        3: "pending",
    }
    record = journal.run("r1")
    assert record is not None and (record.finished_at, record.exit_code) == (None, None)


def test_resume_run_of_an_unknown_run_raises(journal: Journal) -> None:
    with pytest.raises(JournalError, match="no run nope"):
        journal.resume_run("nope")


def test_calls_per_token_accumulate_across_a_resume(tmp_path: Path, lanes: list[Lane]) -> None:
    a, b = lanes
    with Journal.open(tmp_path) as first:
        begin(first, lanes)
        listen = first.listener("r1")
        listen(started(a, 0))
        listen(retrying(a, 0, BUSY))
        listen(started(a, 0, attempt=2))
        listen(finished(a, 0, Outcome.SUCCEEDED, answer=OK, attempts=2))
        listen(started(b, 0))  # killed here: no finish_run

    with Journal.open(tmp_path) as second:  # a new process
        resumable = second.find_resumable(plan_digest(lanes))
        assert resumable is not None
        second.resume_run(resumable.run_id)
        listen = second.listener(resumable.run_id)
        listen(finished(a, 0, Outcome.SKIPPED, Reason("already_succeeded"), attempts=0))
        listen(started(b, 0))
        listen(finished(b, 0, Outcome.SUCCEEDED, answer=OK))
        listen(started(a, 1))
        listen(finished(a, 1, Outcome.SUCCEEDED, answer=OK))

        assert second.calls_per_token("r1") == {a.token_id: 3, b.token_id: 2}


def test_runs_lists_newest_first_with_totals(journal: Journal, lanes: list[Lane]) -> None:
    begin(journal, lanes, "old", "2026-11-27T02:00:00Z")
    journal.finish_run("old", exit_code=0, finished_at="2026-11-27T02:01:00Z")
    begin(journal, lanes, "new", "2026-11-28T02:00:00Z")
    listen = journal.listener("new")
    listen(started(lanes[0], 0))
    listen(finished(lanes[0], 0, Outcome.FAILED, Reason.REJECTED, BAD))
    listen(started(lanes[1], 0))

    summaries = journal.runs()

    assert [s.run_id for s in summaries] == ["new", "old"]
    assert summaries[0].totals == {
        "succeeded": 0,
        "failed": 1,
        "skipped": 0,
        "pending": 1,
        "in_flight": 1,
    }
    assert summaries[1].totals["pending"] == 3
    assert (summaries[1].exit_code, summaries[1].finished_at) == (0, "2026-11-27T02:01:00Z")
    assert [s.run_id for s in journal.runs(limit=1)] == ["new"]


# ------------------------------------------------------------ order and identity


def test_resume_and_runs_follow_the_order_runs_were_recorded_not_the_wall_clock(
    journal: Journal, lanes: list[Lane]
) -> None:
    # The clock was stepped back between the two runs: the second says it started first.
    begin(journal, lanes, "first", "2026-11-28T02:00:00Z")
    begin(journal, lanes, "second", "2026-11-27T02:00:00Z")
    found = journal.find_resumable(plan_digest(lanes))
    assert found is not None and found.run_id == "second"
    assert [s.run_id for s in journal.runs()] == ["second", "first"]
    assert [s.run_id for s in journal.runs(limit=1)] == ["second"]


# The schema of version 1, as earlier journals have it.
_VERSION_1 = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, plan TEXT NOT NULL, digest TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT, exit_code INTEGER,
        dry_run INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1))
    )
    """,
    "CREATE INDEX runs_by_digest ON runs (digest, started_at)",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    """
    CREATE TABLE clears (
        run_id TEXT NOT NULL REFERENCES runs (run_id), seq INTEGER NOT NULL,
        token_id TEXT NOT NULL, server TEXT NOT NULL, type_campaign TEXT NOT NULL,
        campaign_id TEXT NOT NULL, result TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (
            state = 'pending' OR state = 'in_flight' OR state = 'succeeded'
            OR state = 'failed' OR state = 'skipped'),
        attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER, code INTEGER, msg TEXT,
        error TEXT, reason TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, seq)
    )
    """,
    "PRAGMA user_version = 1",
)


def test_a_version_1_journal_keeps_its_runs_in_the_order_they_were_recorded(
    tmp_path: Path, lanes: list[Lane]
) -> None:
    digest = plan_digest(lanes)
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        for statement in _VERSION_1:
            conn.execute(statement)
        for run_id, started_at in (
            ("older", "2026-11-28T02:00:00Z"),
            ("newer", "2026-11-20T02:00:00Z"),
        ):
            conn.execute(
                "INSERT INTO runs (run_id, plan, digest, started_at) VALUES (?, 'p', ?, ?)",
                (run_id, digest, started_at),
            )
    conn.close()
    with Journal.open(tmp_path) as journal:
        assert journal._conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        found = journal.find_resumable(digest)
        assert found is not None and found.run_id == "newer"
        begin(journal, lanes, "latest", "2000-01-01T00:00:00Z")
        assert [s.run_id for s in journal.runs()] == ["latest", "newer", "older"]
        upgraded = layout(journal)
    with Journal.open(tmp_path / "new") as fresh:
        assert upgraded == layout(fresh)  # one layout, however the journal was made


def layout(journal: Journal) -> list[object]:
    """The columns and indexes of the journal's tables."""
    found: list[object] = []
    for table in ("runs", "clears"):
        found.append(journal._conn.execute(f"PRAGMA table_info({table})").fetchall())
        for index in journal._conn.execute(f"PRAGMA index_list({table})").fetchall():
            found.append((index[1:], journal._conn.execute(
                f"PRAGMA index_info({index[1]})").fetchall()))  # fmt: skip
    return found


def test_a_journal_of_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Journal.open(tmp_path)
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    conn.close()


def write_plan(path: Path) -> Path:
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            settings: {cooldown_s: 30}
            defaults: {server: "0014", type_campaign: predictive, token_env: WOLKVOX_TOKEN}
            campaigns:
              - {campaign_id: "3001", results: [busy, answer]}
              - {campaign_id: "4001", results: [busy], token_env: OTHER_TOKEN}
            """
        )
    )
    return path


def test_a_resume_after_a_token_rotation_finds_the_run_and_rests_its_lane_with_the_new_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan(write_plan(tmp_path / "plan.yaml"))
    state = tmp_path / "state"
    monkeypatch.setenv("WOLKVOX_TOKEN", RAW_TOKEN)
    monkeypatch.setenv("OTHER_TOKEN", "token-b")
    with prepare(plan, RunOptions(state_dir=str(state)), say=lambda _: None) as first:
        assert first.state is not None
        a, b = first.lanes
        journal = first.state.journal
        journal.begin_run(first.run_id, plan.source, first.state.digest, first.lanes,
                          started_at=T0)  # fmt: skip
        listen = journal.listener(first.run_id)
        listen(started(a, 0))  # the process dies with this call in flight

    monkeypatch.setenv("WOLKVOX_TOKEN", "wv-new-token-value-after-rotation")
    options = RunOptions(state_dir=str(state), resume="latest")
    with prepare(plan, options, say=lambda _: None) as second:
        assert second.state is not None and second.state.resume is not None
        assert second.run_id == first.run_id
        rotated = second.lanes[0]
        assert rotated.secret is not None
        assert rotated.secret.reveal() == "wv-new-token-value-after-rotation"
        assert second.state.resume.cooling_tokens == {rotated.token_id}
        assert rotated.token_id != a.token_id and second.lanes[1].token_id == b.token_id


# ---------------------------------------------------------------------- failures


def test_journal_error_is_an_orchestrator_error() -> None:
    assert issubclass(JournalError, OrchestratorError)


def test_open_under_a_regular_file_raises_journal_error(tmp_path: Path) -> None:
    # A path under a file cannot be created even by root, unlike a chmod'ed directory.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError, match=r"journal .*file/x/journal\.sqlite3 cannot be opened"):
        Journal.open(blocker / "x")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod 0o500 does not stop root from writing",
)
def test_open_in_a_read_only_directory_raises_journal_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    try:
        with pytest.raises(JournalError, match="cannot be opened"):
            Journal.open(state)
    finally:
        state.chmod(0o700)


def test_open_of_a_database_path_that_is_a_directory_raises_journal_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "journal.sqlite3").mkdir()
    with pytest.raises(JournalError, match="cannot be opened"):
        Journal.open(tmp_path)


def test_full_disk_raises_journal_error_from_the_listener(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    # The database may not grow past its current pages (SQLite clamps 1 up to that),
    # so an answer too large for the page makes SQLite report SQLITE_FULL.
    journal._conn.execute("PRAGMA max_page_count = 1")
    huge = Answer(Verdict.FAILED, http_status=400, code=400, error="x" * 20_000)
    listen = journal.listener("r1")
    with pytest.raises(JournalError, match="cannot be written: database or disk is full") as info:
        listen(finished(lanes[0], 0, Outcome.FAILED, Reason.REJECTED, huge))
    assert str(journal.path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_listener_for_an_unknown_run_raises_journal_error(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    with pytest.raises(JournalError, match="has no run other"):
        journal.listener("other")


def test_a_change_to_a_clear_the_run_lacks_is_refused_naming_it_and_every_later_call_raises(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    record = journal.listener("r1")
    record(finished(lanes[1], 0, Outcome.SUCCEEDED))
    with pytest.raises(JournalError, match=r"has no clear 99 in run r1"):
        record(started(lane("tok-z", clear(99)), 0))
    with pytest.raises(JournalError, match=r"has no clear 99 in run r1"):
        record(started(lanes[0], 0))
    with pytest.raises(JournalError, match=r"has no clear 99 in run r1"):
        asyncio.run(record.settle())
    # What was committed before stays; nothing after the failure was written.
    assert committed_states(journal) == {1: "pending", 2: "succeeded", 3: "pending"}


def test_a_failed_write_is_rolled_back_and_halts_the_recorder(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    listen = journal.listener("r1")
    listen(started(lanes[0], 0))
    journal._conn.execute("PRAGMA max_page_count = 1")
    huge = Answer(Verdict.FAILED, http_status=400, code=400, error="x" * 20_000)
    with pytest.raises(JournalError, match="database or disk is full"):
        listen(finished(lanes[0], 0, Outcome.FAILED, Reason.REJECTED, huge))
    assert not journal._conn.in_transaction
    journal._conn.execute("PRAGMA max_page_count = 1073741823")
    with pytest.raises(JournalError, match="database or disk is full"):
        listen(finished(lanes[1], 0, Outcome.SUCCEEDED, answer=OK))
    assert committed_states(journal) == {1: "in_flight", 2: "pending", 3: "pending"}


def test_a_run_that_cannot_be_begun_leaves_nothing_behind(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    with pytest.raises(JournalError, match="cannot be written: UNIQUE constraint failed"):
        journal.begin_run("r2", "p.yaml", "d", [*lanes, lanes[0]], started_at=T0)
    assert journal.run("r2") is None and journal.clears("r2") == []
    assert not journal._conn.in_transaction


def test_finish_run_of_an_unknown_run_raises(journal: Journal) -> None:
    with pytest.raises(JournalError, match="has no run nope"):
        journal.finish_run("nope", exit_code=0, finished_at=T0)


def test_use_after_close_raises_journal_error(tmp_path: Path, lanes: list[Lane]) -> None:
    journal = Journal.open(tmp_path)
    begin(journal, lanes)
    listen = journal.listener("r1")
    journal.close()
    with pytest.raises(JournalError, match="cannot be written"):
        listen(started(lanes[0], 0))


def test_a_change_stamps_updated_at_in_utc_to_the_millisecond(
    journal: Journal, lanes: list[Lane]
) -> None:
    begin(journal, lanes)
    created = state_of_updated(journal, 1)
    journal.listener("r1")(started(lanes[0], 0))
    changed = state_of_updated(journal, 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", changed)
    assert changed >= created


def state_of_updated(journal: Journal, seq: int) -> str:
    row = journal._conn.execute("SELECT updated_at FROM clears WHERE seq = ?", (seq,)).fetchone()
    return str(row[0])


# ------------------------------------------------------------------------ helpers


def committed_states(journal: Journal) -> dict[int, str]:
    """What another process would read now: only committed data."""
    other = sqlite3.connect(journal.path)
    try:
        return dict(other.execute("SELECT seq, state FROM clears ORDER BY seq").fetchall())
    finally:
        other.close()


def sigkilled_script(state_dir: Path, body: str) -> str:
    return textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from orchestrator.run.events import ClearStarted
        from orchestrator.state.journal import Journal
        from orchestrator.plan.model import Clear, Lane, TokenRef
        clear = Clear(1, "0014", "predictive", "3001", None, TokenRef("env", "T"))
        journal = Journal.open(Path({str(state_dir)!r}))
        journal.begin_run("r1", "p.yaml", "d", [Lane("tok", (), None, (clear,))], started_at="t")
        record = journal.listener("r1")
        """
    ) + textwrap.dedent(body)
