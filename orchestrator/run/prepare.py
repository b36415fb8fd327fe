"""Step one of a run: everything that can refuse it, before anything is sent.

:func:`prepare` is synchronous. It checks the options against the plan, reads the
tokens, builds the lanes and every server's request URL, settles the open-file
budget, opens the journal, finds the run to resume and takes its run lock. It
raises :class:`~orchestrator.errors.UsageError` (or a plan error) to refuse: exit 2,
nothing sent and nothing written to the journal. The :class:`Prepared` run it
returns owns what it opened; :func:`orchestrator.run.execute.perform` is step two.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from yarl import URL

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.output.views import render_schedule
from orchestrator.plan.model import Lane, Plan, count_tokens
from orchestrator.plan.tokens import build_lanes, missing_tokens, placeholder_tokens, read_tokens
from orchestrator.plan.validate import check_base_url
from orchestrator.run.events import Reason
from orchestrator.run.openfiles import ensure_open_files, files_needed
from orchestrator.run.order import Estimates, in_start_order
from orchestrator.state.journal import ClearRecord, Journal, RunRecord, plan_digest, run_state_dir
from orchestrator.state.locks import RunLock
from orchestrator.wolkvox.client import build_url

#: ``--resume`` without a run id: the latest unfinished or failed run of the plan.
LATEST = "latest"

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The command-line options of ``run`` and ``clear``."""

    dry_run: bool = False
    base_url: str | None = None
    report: str | None = None
    log_format: str = "auto"
    simulate: bool = False
    max_clears: int | None = None
    lock_url: str | None = None
    state_dir: str | None = None
    resume: str | None = None
    metrics_file: str | None = None
    check_quota: bool = False
    #: The command that runs this again, to which the ending adds ``--resume=RUN_ID``
    #: (empty: the ending tells no command).
    resume_command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resume:
    """What a resumed run carries over from the run it continues."""

    #: Clears that succeeded before: not sent again.
    succeeded: frozenset[int] = frozenset()
    #: Tokens whose call may still be running at wolkvox: they rest first.
    cooling_tokens: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class State:
    """The journal of a run, opened (and read, never written) before anything is sent."""

    journal: Journal
    state_dir: Path
    #: The run's id: only a journaled run has one, so ``show`` finds every id it is told.
    run_id: str
    digest: str
    #: ``None`` for a new run.
    resume: Resume | None


@dataclass(slots=True)
class Prepared:
    """A run that passed every check; use it as a context manager to close what it holds."""

    plan: Plan
    lanes: tuple[Lane, ...]
    options: RunOptions
    #: The API's URL template (with ``--simulate``, the simulator's replaces it once started).
    base_url: str
    #: ``None`` for a dry run: it opens no journal.
    state: State | None
    _held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    #: Expected durations of the clears, from the journal (which ordered the lanes).
    estimates: Estimates = field(default_factory=Estimates)

    @property
    def run_id(self) -> str | None:
        """The journaled run's id; ``None`` for a dry run, which is never journaled."""
        return None if self.state is None else self.state.run_id

    def close(self) -> None:
        """Release the run lock and close the journal."""
        self._held.close()

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261128T045500Z-3fa9c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a ``Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def prepare(plan: Plan, options: RunOptions, *, say: Say) -> Prepared:
    """Check everything that can refuse the run; raise :class:`UsageError` or a plan error."""
    _check_options(plan, options)
    base_url = options.base_url or plan.settings.base_url
    if not options.simulate:
        check_request_urls(plan, base_url, "--base-url" if options.base_url else "base_url")
    state_dir = run_state_dir(options.state_dir, simulated=options.simulate)
    # The journal's last durations, read only: the longest expected campaigns start first.
    lanes, estimates = in_start_order(plan, _lanes(plan, options, say), state_dir)
    if options.dry_run:  # a dry run opens no connection, lock or journal
        say(render_schedule(plan, lanes))
        return Prepared(plan, lanes, options, base_url, None, estimates=estimates)
    at_once = min(plan.settings.max_parallel_tokens, count_tokens(lanes))
    ensure_open_files(files_needed(at_once, simulated=options.simulate), lanes_at_once=at_once)
    held = contextlib.ExitStack()
    with contextlib.ExitStack() as on_refusal:
        on_refusal.push(held)
        journal = Journal.open(state_dir)
        held.callback(journal.close)
        state = _state(plan, lanes, options, journal, state_dir, held)
        on_refusal.pop_all()
    return Prepared(plan, lanes, options, base_url, state, held, estimates=estimates)


def _check_options(plan: Plan, options: RunOptions) -> None:
    if options.simulate and options.base_url:
        raise UsageError("--simulate and --base-url cannot be used together")
    if options.base_url and (why := check_base_url(options.base_url)):
        raise UsageError(f"--base-url: {why}")
    if options.max_clears is not None and len(plan.clears) > options.max_clears:
        raise UsageError(
            f"{plan.source} expands to {len(plan.clears)} clears, more than --max-clears "
            f"{options.max_clears}; nothing was sent"
        )
    for option, path in (("--report", options.report), ("--metrics-file", options.metrics_file)):
        if not path:
            continue
        # Found after the clears, a path that cannot take the file would lose their record.
        if Path(path).is_dir():
            raise UsageError(f"{option}: {path} is a directory; name a file; nothing was sent")
        folder = Path(path).resolve().parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise UsageError(f"{option}: cannot write into {folder}")


def check_request_urls(plan: Plan, base_url: str, option: str) -> None:
    """Build each server's request URL now, so a URL that cannot be sent refuses the run.

    A host must survive the IDNA encoding the resolver applies when the request
    leaves (``a..b.example`` does not): found here, it is bad input, not a crash
    after the run started.
    """
    servers = {clear.server: clear for clear in plan.clears}
    for server, clear in servers.items():
        host = URL(build_url(base_url, clear), encoded=True).raw_host or ""
        try:
            host.encode("idna")
        except UnicodeError as exc:
            raise UsageError(
                f"{option}: server {server} has the host {host!r}, which cannot be sent to "
                f"({exc}); nothing was sent"
            ) from exc


def _lanes(plan: Plan, options: RunOptions, say: Say) -> tuple[Lane, ...]:
    if options.simulate:
        return build_lanes(plan.clears, placeholder_tokens(plan))
    if options.dry_run and (warnings := missing_tokens(plan)):
        # A dry run shows the schedule even where tokens are absent, as validate does.
        for warning in warnings:
            say(warning)
        return build_lanes(plan.clears, None)
    return build_lanes(plan.clears, read_tokens(plan))


def _state(
    plan: Plan,
    lanes: tuple[Lane, ...],
    options: RunOptions,
    journal: Journal,
    state_dir: Path,
    held: contextlib.ExitStack,
) -> State:
    """The run's journal state: a new run, or the run to resume (read only)."""
    digest = plan_digest(lanes)
    if options.resume is None:
        run_id = new_run_id()
    else:
        record = _resumable(plan, journal, digest, options)
        _check_same_target(record, options)
        run_id = record.run_id
    # Held while this process runs the run (``held`` releases it), so no other process
    # resumes it meanwhile.
    run_lock = RunLock.take(state_dir, run_id)
    if run_lock is None:
        raise UsageError(f"--resume: run {run_id} is still running in another process")
    held.callback(run_lock.release)
    # Read under the run lock, so no other process moves the run on meanwhile.
    resume = None if options.resume is None else _carried_over(journal, run_id, lanes)
    return State(journal, state_dir, run_id, digest, resume)


def _resumable(plan: Plan, journal: Journal, digest: str, options: RunOptions) -> RunRecord:
    run_id = None if options.resume == LATEST else options.resume
    record = journal.find_resumable(digest, run_id, simulated=options.simulate)
    if record is None:
        which = f"run {run_id}" if run_id else f"unfinished or failed run of {plan.source}"
        raise UsageError(f"--resume: found no {which} to resume in {journal.path}")
    if record.digest != digest:
        raise UsageError(
            f"--resume: run {record.run_id} was made from a different plan "
            f"(digest {record.digest[:12]}, this plan {digest[:12]}); nothing was sent"
        )
    return record


def _check_same_target(record: RunRecord, options: RunOptions) -> None:
    """Refuse to resume a simulated run for real, or a real run at the simulator.

    A resumed run does not send again what succeeded before: had that been at the
    simulator, real records would be left and reported cleared. A run that did not
    record whether it was simulated (an older journal's) is not checked. Another
    base URL is allowed: a run is resumed where it can get through now.
    """
    if record.simulated is not None and record.simulated != options.simulate:
        was, now = ("simulated", "a real run") if record.simulated else ("real", "simulated")
        raise UsageError(
            f"--resume: run {record.run_id} was {was} and cannot be resumed as {now}; "
            "nothing was sent"
        )


def _carried_over(journal: Journal, run_id: str, lanes: tuple[Lane, ...]) -> Resume:
    try:
        prior = journal.clears(run_id)
    except OrchestratorError as exc:
        raise UsageError(f"--resume: {exc}") from exc
    # The lane that runs each clear now: its token may have been rotated since (the same
    # digest, so the same seqs). In a pool, the token that sent it, if it is still there.
    token_of = {clear.seq: lane.token_id for lane in lanes for clear in lane.clears}
    pooled = {
        clear.seq: {token.token_id for token in lane.pool}
        for lane in lanes
        for clear in lane.clears
    }
    cooling = set()
    for c in prior:
        if _maybe_running(c) and not pooled[c.seq]:
            cooling.add(token_of[c.seq])
        elif _maybe_running(c) and c.token_id in pooled[c.seq]:
            cooling.add(c.token_id)
    return Resume(
        succeeded=frozenset(c.seq for c in prior if c.state == "succeeded"),
        # A call in flight at a crash, or cut by a second signal, may still be running at
        # wolkvox: its token rests before it sends again.
        cooling_tokens=frozenset(cooling),
    )


def _maybe_running(clear: ClearRecord) -> bool:
    # A failed clear whose last call got no HTTP answer (the transport could not tell
    # whether it arrived) or was cut by a second signal may have been cut in its rest
    # too: the journal cannot tell, so its token rests again before use.
    return clear.state == "in_flight" or (
        clear.state == "failed"
        and clear.attempts > 0
        and (clear.http_status is None or clear.reason == Reason.INTERRUPTED)
    )
