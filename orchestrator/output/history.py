"""What ``orchestrator runs`` and ``orchestrator show`` print: journaled runs, for people and jq."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from orchestrator.state.journal import ClearRecord, RunRecord, RunSummary


def runs_json(runs: Sequence[RunSummary]) -> str:
    return json.dumps([dataclasses.asdict(run) for run in runs], indent=2)


def runs_table(runs: Sequence[RunSummary]) -> list[str]:
    lines = [
        f"{'RUN':<26} {'STARTED':<28} {'EXIT':>4} {'OK':>6} {'FAILED':>6} "
        f"{'SKIPPED':>7} {'PENDING':>7}  {'TARGET':<30}  PLAN"
    ]
    for run in runs:
        t = run.totals
        exit_code = "-" if run.exit_code is None else str(run.exit_code)
        pending = t["pending"] + t["in_flight"]
        lines.append(
            f"{run.run_id:<26} {run.started_at:<28} {exit_code:>4} {t['succeeded']:>6} "
            f"{t['failed']:>6} {t['skipped']:>7} {pending:>7}  {_target(run):<30}  {run.plan}"
            + ("  (dry run)" if run.dry_run else "")
        )
    return lines


def show_json(record: RunRecord, clears: Sequence[ClearRecord], calls: dict[str, int]) -> str:
    document = dataclasses.asdict(record) | {
        "calls_per_token": calls,
        "clears": [dataclasses.asdict(c) for c in clears],
    }
    return json.dumps(document, indent=2)


def show_text(record: RunRecord, clears: Sequence[ClearRecord]) -> list[str]:
    exit_code = "unfinished" if record.exit_code is None else f"exit {record.exit_code}"
    lines = [
        f"run {record.run_id}: {record.plan}, started {record.started_at}, {exit_code}",
        f"  sent to {_sent_to(record)}",
    ]
    for c in clears:
        detail = ", ".join(
            f"{k} {v}"
            for k, v in (
                ("reason", c.reason),
                ("http", c.http_status),
                ("code", c.code),
                ("error", c.error),
            )
            if v is not None
        )
        lines.append(
            f"  #{c.seq:<5} {c.state:<10} server {c.server} {c.type_campaign} "
            f"campaign {c.campaign_id}: {c.result} "
            f"(attempts {c.attempts}{', ' + detail if detail else ''})"
        )
    return lines


def _target(run: RunRecord) -> str:
    """Where a run was sent, in a word: ``simulated``, the URL template, or ``-``."""
    if run.simulated:
        return "simulated"
    return run.base_url or "-"  # "-": recorded by an orchestrator that did not say


def _sent_to(run: RunRecord) -> str:
    if run.simulated:
        return f"the built-in simulator at {run.base_url}, not wolkvox (simulated)"
    return run.base_url or "(not recorded)"
