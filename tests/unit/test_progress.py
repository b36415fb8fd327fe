"""The live progress display: what it shows for each event, and where it writes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fakes import MAINTENANCE, OK, TIMEOUT, UNAVAILABLE, make_clear, make_lane
from rich.console import Console

from orchestrator.output.log import make_logger
from orchestrator.output.progress import Progress, progress_wanted
from orchestrator.plan.model import Lane, TokenRef
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    RestReason,
    TokenResting,
    TokenWaiting,
)

TOK_A, TOK_B = TokenRef("env", "TOK_A"), TokenRef("file", "/run/secrets/ops")
A = make_lane(
    "A", make_clear(1, campaign="3001", token=TOK_A), make_clear(2, campaign="3002", token=TOK_A)
)
B = make_lane(
    "B",
    make_clear(3, campaign="4001", result=None, token=TOK_B),
    make_clear(4, campaign="4002", token=TOK_B),
)
C = make_lane("C", make_clear(5, campaign="5001", token=TokenRef("env", "TOK_C")))


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def quiet_console(file: io.StringIO | None = None) -> Console:
    return Console(file=file or io.StringIO(), width=120, force_terminal=False)


def shown(progress: Progress) -> str:
    out = io.StringIO()
    quiet_console(out).print(progress.render())
    return out.getvalue()


def feed(progress: Progress, *events: Event) -> None:
    for event in events:
        progress(event)


def started(lane: Lane, index: int, attempt: int = 1) -> ClearStarted:
    return ClearStarted(lane.clears[index], lane.token_id, attempt)


def finished(
    lane: Lane,
    index: int,
    outcome: Outcome = Outcome.SUCCEEDED,
    ms: int = 10_000,
    *,
    attempts: int = 1,
    reason: Reason | None = None,
) -> ClearFinished:
    answer = OK if outcome is Outcome.SUCCEEDED else None
    return ClearFinished(lane.clears[index], lane.token_id, outcome, reason, attempts, answer, ms)


def make(*lanes: Lane, clock: Clock | None = None, **kw: int) -> Progress:
    return Progress(lanes, console=quiet_console(), clock=clock or Clock(), **kw)


# progress_wanted


def test_progress_is_wanted_whenever_stderr_is_a_terminal() -> None:
    # Whatever stdout is and whatever log format it carries: the display is on stderr.
    assert progress_wanted(Tty()) is True


def test_progress_is_never_wanted_when_stderr_is_no_terminal() -> None:
    assert progress_wanted(io.StringIO()) is False


def test_a_closed_stderr_wants_no_progress() -> None:
    stream = io.StringIO()
    stream.close()
    assert progress_wanted(stream) is False


# counts and lanes


def test_before_anything_happens_it_shows_the_total_and_no_estimate() -> None:
    text = shown(make(A, B, C))
    assert "0/5 clears" in text
    assert "0 succeeded, 0 failed, 0 skipped" in text
    assert "left —" in text
    assert "lanes: 0 running, 3 queued, 0 done" in text


def test_counts_follow_the_finished_clears() -> None:
    progress = make(A, B, C)
    feed(
        progress,
        started(A, 0),
        finished(A, 0),
        started(B, 0),
        finished(B, 0, Outcome.FAILED, reason=Reason.REJECTED),
        finished(B, 1, Outcome.SKIPPED, attempts=0, reason=Reason.BLOCKED_BY_FAILURE),
    )
    text = shown(progress)
    assert "3/5 clears" in text
    assert "1 succeeded, 1 failed, 1 skipped" in text
    assert "lanes: 1 running, 1 queued, 1 done" in text


def test_clears_done_before_a_resume_count_as_already_succeeded_not_skipped() -> None:
    progress = make(A, B, C)
    feed(
        progress,
        finished(A, 0, Outcome.SKIPPED, attempts=0, ms=0, reason=Reason.ALREADY_SUCCEEDED),
        started(A, 1),
        finished(A, 1),
    )
    text = shown(progress)
    assert "2/5 clears" in text
    assert "1 succeeded, 1 already succeeded, 0 failed, 0 skipped" in text


def test_each_running_lane_shows_the_campaign_it_is_on() -> None:
    progress = make(A, B)
    feed(progress, started(A, 0), finished(A, 0), started(A, 1), started(B, 0))
    text = shown(progress)
    assert "env:TOK_A" in text and "file:/run/secrets/ops" in text
    assert A.token_id not in text and B.token_id not in text  # people know tokens by name
    assert "#2 0014/predictive/3002/busy" in text
    assert "2/2" in text  # lane A is on its second clear
    assert "#3 0014/predictive/4001/all" in text
    assert "sending" in text
    assert "#1 " not in text  # A moved on


def test_a_lane_that_ended_leaves_the_table() -> None:
    progress = make(A, C)
    feed(progress, started(C, 0), finished(C, 0))
    text = shown(progress)
    assert "env:TOK_C" not in text
    assert "lanes: 0 running, 1 queued, 1 done" in text


def test_between_two_clears_a_lane_shows_how_the_last_one_ended() -> None:
    progress = make(A)
    feed(progress, started(A, 0), finished(A, 0, Outcome.FAILED, reason=Reason.REJECTED))
    assert "between clears, last failed (rejected)" in shown(progress)


def test_a_later_attempt_shows_its_number() -> None:
    progress = make(A)
    progress(started(A, 0, attempt=2))
    assert "sending, attempt 2 of 4" in shown(progress)
    progress(started(A, 0, attempt=1))
    assert "attempt" not in shown(progress)


def test_a_retry_counts_down_to_the_next_attempt() -> None:
    clock = Clock()
    progress = make(A, clock=clock)
    feed(progress, started(A, 0), ClearRetrying(A.clears[0], A.token_id, 1, 5.0, UNAVAILABLE))
    assert "attempt 1 of 4 failed (HTTP 503), retrying in 5s" in shown(progress)
    clock.now += 3.2
    assert "retrying in 2s" in shown(progress)
    clock.now += 10
    assert "retrying in 0s" in shown(progress)
    progress(started(A, 0, attempt=2))
    assert "sending, attempt 2 of 4" in shown(progress)


def test_a_retry_without_an_http_status_shows_the_error() -> None:
    progress = make(A)
    feed(progress, started(A, 0), ClearRetrying(A.clears[0], A.token_id, 1, 60.0, TIMEOUT))
    assert "(timeout), retrying in 60s" in shown(progress)


def test_a_resting_token_counts_down_its_rest_then_its_retry() -> None:
    clock = Clock()
    progress = make(A, clock=clock)
    clear = A.clears[0]
    until = datetime(2026, 12, 4, 2, 11, 5, tzinfo=UTC)
    rest = TokenResting(clear, A.token_id, RestReason.OUTCOME_UNKNOWN, 60.0, until, TIMEOUT)
    feed(progress, started(A, 0), rest)
    assert "resting 1:00 (outcome unknown)" in shown(progress)
    clock.now += 17.5
    assert "resting 0:43 (outcome unknown)" in shown(progress)
    clock.now += 42.5
    progress(ClearRetrying(clear, A.token_id, 1, 2.0, TIMEOUT))
    assert "resting" not in shown(progress)
    assert "(timeout), retrying in 2s" in shown(progress)


def test_a_resumed_lane_shows_its_rest_before_its_first_call() -> None:
    clock = Clock()
    progress = make(A, B, clock=clock)
    until = datetime(2026, 12, 4, 2, 11, 5, tzinfo=UTC)
    progress(TokenResting(A.clears[0], A.token_id, RestReason.IN_FLIGHT_AT_RESUME, 42.0, until))
    text = shown(progress)
    assert "resting 0:42 (resumed)" in text
    assert "lanes: 1 running, 1 queued, 0 done" in text
    progress(started(A, 0))
    assert "resting" not in shown(progress) and "sending" in shown(progress)


def test_a_maintenance_wait_is_shown_as_a_rest() -> None:
    progress = make(A)
    until = datetime(2026, 12, 4, 2, 12, 5, tzinfo=UTC)
    rest = TokenResting(A.clears[0], A.token_id, RestReason.MAINTENANCE, 120.0, until, MAINTENANCE)
    feed(progress, started(A, 0), rest)
    assert "resting 2:00 (maintenance)" in shown(progress)


def test_waiting_for_the_token_is_shown_and_kept_once_the_call_is_sent() -> None:
    progress = make(A)
    progress(TokenWaiting(A.clears[0], A.token_id, 3.25))
    assert "waiting for token" in shown(progress)
    progress(started(A, 0))
    assert "sending, waited 3.2 s for the token" in shown(progress)
    feed(progress, finished(A, 0), started(A, 1))
    assert "waited" not in shown(progress)


def test_many_running_lanes_are_summed_up() -> None:
    lanes = [make_lane(f"L{i}", make_clear(i + 1)) for i in range(15)]
    progress = make(*lanes)
    feed(progress, *(started(lane, 0) for lane in lanes))
    text = shown(progress)
    assert "… and 3 more lanes running" in text
    assert "lanes: 15 running, 0 queued, 0 done" in text


def test_the_display_shows_no_token_value() -> None:
    progress = make(A, B)
    feed(progress, started(A, 0), ClearRetrying(A.clears[0], A.token_id, 1, 2.0, UNAVAILABLE))
    feed(progress, TokenWaiting(B.clears[0], B.token_id, 1.0), started(B, 0))
    text = shown(progress)
    assert "token-A" not in text and "token-B" not in text
    assert "env:TOK_A" in text and "file:/run/secrets/ops" in text


def test_two_references_to_one_token_show_the_one_the_clear_uses() -> None:
    shared = Lane(
        A.token_id,
        ("env:TOK_A", "env:TOK_A_TOO"),
        A.secret,
        (A.clears[0], make_clear(9, token=TokenRef("env", "TOK_A_TOO"))),
    )
    progress = make(shared)
    feed(progress, started(shared, 0))
    assert "env:TOK_A " in shown(progress) and "TOK_A_TOO" not in shown(progress)
    feed(progress, finished(shared, 0), started(shared, 1))
    assert "env:TOK_A_TOO" in shown(progress)


# time


def test_elapsed_time_runs_on_the_clock() -> None:
    clock = Clock()
    progress = make(A, clock=clock)
    clock.now += 3725
    assert "elapsed 1:02:05" in shown(progress)


def test_the_estimate_appears_after_the_first_timed_clear() -> None:
    clock = Clock()
    progress = make(A, B, clock=clock)
    feed(progress, started(A, 0), started(B, 0))
    assert "left —" in shown(progress)
    clock.now += 10
    progress(finished(A, 0, ms=10_000))
    # A: 1 clear left; B: its current clear (10 s in, done on average) and 1 more.
    assert progress.estimate_left() == pytest.approx(10.0)
    assert "left ~0:10" in shown(progress)


def test_skipped_clears_do_not_shorten_the_mean() -> None:
    progress = make(A, B)
    feed(
        progress,
        started(A, 0),
        finished(A, 0, ms=20_000),
        finished(B, 0, Outcome.SKIPPED, attempts=0, ms=0, reason=Reason.ALREADY_SUCCEEDED),
    )
    # Each lane has one clear left at 20 s each, side by side.
    assert progress.estimate_left() == pytest.approx(20.0)


def test_the_longest_lane_sets_the_estimate() -> None:
    long = make_lane("L", *(make_clear(10 + i) for i in range(5)))
    progress = make(long, C)
    feed(progress, started(C, 0), finished(C, 0, ms=4_000))
    assert progress.estimate_left() == pytest.approx(20.0)


def test_fewer_parallel_slots_than_lanes_stretch_the_estimate() -> None:
    lanes = [make_lane(f"P{i}", make_clear(20 + 2 * i), make_clear(21 + 2 * i)) for i in range(4)]
    progress = make(*lanes, max_parallel=2)
    feed(progress, started(lanes[0], 0), finished(lanes[0], 0, ms=6_000))
    # 7 clears of 6 s over 2 slots outlast the longest lane (2 clears).
    assert progress.estimate_left() == pytest.approx(21.0)


def test_a_finished_run_has_nothing_left() -> None:
    progress = make(C)
    feed(progress, started(C, 0), finished(C, 0))
    assert progress.estimate_left() == 0.0
    assert "left ~0:00" in shown(progress)


def test_a_dry_run_never_has_an_estimate_until_it_ends() -> None:
    progress = make(A)
    progress(finished(A, 0, Outcome.SKIPPED, attempts=0, ms=0, reason=Reason.DRY_RUN))
    assert progress.estimate_left() is None


def test_an_interrupt_says_the_run_is_stopping() -> None:
    progress = make(A, B)
    feed(
        progress,
        started(A, 0),
        finished(B, 0, Outcome.SKIPPED, attempts=0, reason=Reason.INTERRUPTED),
    )
    text = shown(progress)
    assert "stopping (interrupted)" in text
    assert "left —" in text


# robustness


def test_an_unknown_clear_is_counted_but_breaks_nothing() -> None:
    stranger = make_lane("X", make_clear(99))
    progress = make(A)
    feed(progress, started(stranger, 0), finished(stranger, 0))
    assert "1/2 clears" in shown(progress)


def test_a_fault_in_the_display_never_reaches_the_scheduler() -> None:
    progress = make(A)
    progress._counts = None  # type: ignore[assignment]
    progress(finished(A, 0))  # must not raise: the scheduler would halt the run
    assert "progress display" in shown(progress)


# the log above the display


def test_log_stream_lines_land_in_the_console() -> None:
    out = io.StringIO()
    progress = Progress([A], console=quiet_console(out), clock=Clock())
    stream = progress.log_stream(Tty())
    stream.write("first line\nsecond ")
    stream.write("line\n")
    assert out.getvalue() == "first line\nsecond line\n"
    stream.write("partial")
    stream.flush()
    assert out.getvalue().endswith("partial\n")


def test_log_stream_carries_console_log_lines_without_their_colour_codes() -> None:
    out = io.StringIO()
    progress = Progress([A], console=quiet_console(out), clock=Clock())
    logger = make_logger("console", "run-1", progress.log_stream(Tty()))
    logger.info("clear.started", seq=1, token_id=A.token_id, token="env:TOK_A")
    line = out.getvalue()
    assert "▶ started    #1  env:TOK_A\n" in line
    assert "\x1b" not in line


def test_a_redirected_stdout_gets_the_log_directly() -> None:
    progress = make(A)
    redirected = io.StringIO()
    assert progress.log_stream(redirected) is redirected


def test_the_live_display_runs_and_leaves_nothing_behind_in_a_file() -> None:
    out = io.StringIO()
    with Progress([A], console=quiet_console(out), clock=Clock()) as progress:
        progress(started(A, 0))
        progress.log_stream(Tty()).write("a log line\n")
    assert out.getvalue() == "a log line\n"


def test_on_a_terminal_the_display_is_drawn_then_erased() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with Progress([A], console=console, clock=Clock()) as progress:
        progress(started(A, 0))
        progress.log_stream(Tty()).write("a log line\n")
    text = out.getvalue()
    assert "a log line" in text
    assert "0/2 clears" in text
    assert text.endswith("\x1b[2K")  # transient: the last thing written erases the display
