"""The run report: one JSON document per run, written atomically.

It is written after every run that started, also after failures and
interrupts, so a caller always finds a complete file or none at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.errors import ReportError
from orchestrator.output.atomic import write_text_atomically
from orchestrator.plan.model import Lane
from orchestrator.run.events import (
    TALLIES,
    ClearFinished,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    clear_fields,
    outcome_fields,
    tally_of,
)

#: How many failed or skipped clears the collector keeps for the ending to name.
NOT_DONE_KEPT = 20


@dataclass(slots=True)
class ReportCollector:
    """A scheduler listener that counts how clears ended and the calls per token.

    Calls are counted retries included: every call spends the token's daily quota.
    With ``keep_clears`` (a run with ``--report``) it also keeps every clear's
    terminal event for the report's ``clears``; without, it keeps none, since a
    plan of 100,000 clears would hold them all to its end for nothing. Either way
    it keeps the first :data:`NOT_DONE_KEPT` clears that failed or were skipped
    (a dry run's excepted), which the ending names.
    """

    keep_clears: bool = True
    finished: dict[int, ClearFinished] = field(default_factory=dict)
    calls_per_token: dict[str, int] = field(default_factory=dict)
    #: Clears whose outcome the journal could not record, by seq.
    unrecorded: list[int] = field(default_factory=list)
    #: The first failed or skipped clears, in the order they ended.
    not_done: list[ClearFinished] = field(default_factory=list)
    _counts: dict[str, int] = field(init=False, default_factory=lambda: dict.fromkeys(TALLIES, 0))

    def __call__(self, event: Event) -> None:
        """Count ``event`` when it ends a clear (keep it, with ``keep_clears``) or starts a call."""
        if isinstance(event, ClearFinished):
            tally = tally_of(event)
            self._counts[tally] += 1
            if event.unrecorded is not None:
                self.unrecorded.append(event.clear.seq)
            left = tally in (Outcome.FAILED, Outcome.SKIPPED) and event.reason is not Reason.DRY_RUN
            if left and len(self.not_done) < NOT_DONE_KEPT:
                self.not_done.append(event)
            if self.keep_clears:
                self.finished[event.clear.seq] = event
        elif isinstance(event, ClearStarted):
            self.calls_per_token[event.token_id] = self.calls_per_token.get(event.token_id, 0) + 1

    def all_succeeded(self) -> bool:
        """True when every clear succeeded, in this run or in the run it resumed."""
        return self._counts["failed"] == self._counts["skipped"] == 0

    def totals(self) -> dict[str, int]:
        """How many clears ended each way (:data:`~orchestrator.run.events.TALLIES`)."""
        return dict(self._counts)

    def clears(self, lanes: Sequence[Lane] = ()) -> list[dict[str, object]]:
        """One flat record per clear, in plan order; needs ``keep_clears``.

        A clear of ``lanes`` that never ended (the run failed under it) is listed too,
        as ``unfinished``: the report names every clear of the plan, never fewer.
        """
        if not self.keep_clears:
            raise RuntimeError("this collector keeps no clears (keep_clears=False)")
        records = {
            seq: clear_fields(event.clear, event.token_id) | outcome_fields(event)
            for seq, event in self.finished.items()
        }
        for lane in lanes:
            for clear in lane.clears:
                if clear.seq not in records:
                    records[clear.seq] = clear_fields(clear, lane.token_id) | {
                        "outcome": "unfinished",
                        "reason": None,
                    }
        return [records[seq] for seq in sorted(records)]


def pool_campaigns(lanes: Sequence[Lane], collector: ReportCollector) -> list[dict[str, object]]:
    """Each campaign of a pool: its clears in order and the tokens that ended them.

    The tokens are listed in the order they served the campaign: more than one when a
    token left the pool and another carried the campaign on.
    """
    campaigns: list[dict[str, object]] = []
    for lane in lanes:
        for chain in lane.campaigns() if lane.pool else ():
            ends = [collector.finished[c.seq] for c in chain if c.seq in collector.finished]
            served = [end.token_id for end in ends if end.attempts > 0]
            server, type_campaign, campaign_id = chain[0].target
            campaigns.append(
                {
                    "pool": lane.token_id,
                    "server": server,
                    "type_campaign": type_campaign,
                    "campaign_id": campaign_id,
                    "seqs": [c.seq for c in chain],
                    "token_ids": list(dict.fromkeys(served)),
                }
            )
    return campaigns


def write_json_atomically(path: str | os.PathLike[str], document: object) -> None:
    """Write ``document`` as JSON to ``path`` so readers see the old file or the new one."""
    try:
        write_text_atomically(path, json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise ReportError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
