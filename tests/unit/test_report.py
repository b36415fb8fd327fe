"""The report collector: the same counts whether or not it keeps every clear for a report."""

from __future__ import annotations

import pytest
from fakes import OK, REJECTED, make_clear

from orchestrator.output.report import ReportCollector
from orchestrator.run.events import ClearFinished, ClearStarted, Event, Outcome, Reason


def ended(seq: int, token_id: str, outcome: Outcome, reason: Reason | None = None) -> ClearFinished:
    answer = OK if outcome is Outcome.SUCCEEDED else REJECTED if reason is Reason.REJECTED else None
    attempts = 0 if outcome is Outcome.SKIPPED else 1
    return ClearFinished(make_clear(seq), token_id, outcome, reason, attempts, answer, 5)


def started(seq: int, token_id: str, attempt: int = 1) -> ClearStarted:
    return ClearStarted(make_clear(seq), token_id, attempt)


MIXED: list[Event] = [
    started(1, "a"),
    ended(1, "a", Outcome.SUCCEEDED),
    started(2, "b"),
    started(2, "b", attempt=2),
    ended(2, "b", Outcome.FAILED, Reason.REJECTED),
    ended(3, "b", Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE),
    ended(4, "a", Outcome.SKIPPED, Reason.ALREADY_SUCCEEDED),
]


def collect(events: list[Event], *, keep_clears: bool) -> ReportCollector:
    collector = ReportCollector(keep_clears=keep_clears)
    for event in events:
        collector(event)
    return collector


def test_a_collector_without_clears_counts_what_one_with_clears_counts() -> None:
    kept, counted = collect(MIXED, keep_clears=True), collect(MIXED, keep_clears=False)
    assert (
        counted.totals()
        == kept.totals()
        == {
            "succeeded": 1,
            "already_succeeded": 1,
            "failed": 1,
            "skipped": 1,
        }
    )
    assert counted.calls_per_token == kept.calls_per_token == {"a": 1, "b": 2}
    assert counted.all_succeeded() is kept.all_succeeded() is False
    assert [record["seq"] for record in kept.clears()] == [1, 2, 3, 4]
    assert counted.finished == {}  # nothing kept to the end of the run for nothing
    with pytest.raises(RuntimeError, match="keeps no clears"):
        counted.clears()


@pytest.mark.parametrize("keep_clears", [True, False])
@pytest.mark.parametrize(
    ("events", "all_succeeded"),
    [
        ([], True),
        ([ended(1, "a", Outcome.SUCCEEDED)], True),
        (
            [
                ended(1, "a", Outcome.SUCCEEDED),
                ended(2, "a", Outcome.SKIPPED, Reason.ALREADY_SUCCEEDED),
            ],
            True,
        ),
        (
            [ended(1, "a", Outcome.SUCCEEDED), ended(2, "a", Outcome.SKIPPED, Reason.INTERRUPTED)],
            False,
        ),
        ([ended(1, "a", Outcome.FAILED, Reason.REJECTED), ended(2, "a", Outcome.SUCCEEDED)], False),
    ],
    ids=["nothing", "success", "already succeeded", "interrupted", "failed first"],
)
def test_every_clear_must_have_succeeded_now_or_before(
    events: list[Event], all_succeeded: bool, keep_clears: bool
) -> None:
    assert collect(events, keep_clears=keep_clears).all_succeeded() is all_succeeded
