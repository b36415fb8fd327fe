"""Turn a validated plan and the run options into a run, and perform it.

:func:`prepare` does everything that can refuse a run before anything is sent
(guards, tokens, lanes, the journal, the run to resume); :func:`perform` takes
the locks, runs, and closes the journal. Heavy modules (aiohttp, redis, rich)
are imported only here, when a run really happens: start-up time counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.plan.model import Lane, Plan
from orchestrator.run.events import Reason
from orchestrator.state.locks import RunLock, open_token_locks

if TYPE_CHECKING:
    from orchestrator.output.log import LogFormat
    from orchestrator.output.progress import Progress
    from orchestrator.run.execute import Resume, RunResult, RunSpec
    from orchestrator.state.journal import ClearRecord, Journal
    from orchestrator.state.locks import TokenLocks

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


@dataclass(frozen=True, slots=True)
class Durable:
    """The journal of a run, opened before anything is sent."""

    journal: Journal
    state_dir: Path
    digest: str
    run_id: str
    resume: Resume | None
    #: Held while this process runs the run, so no other process resumes it meanwhile.
    run_lock: RunLock | None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A run that passed every check and is ready to start."""

    plan: Plan
    lanes: tuple[Lane, ...]
    options: RunOptions
    durable: Durable | None


def prepare(plan: Plan, options: RunOptions, *, say: Say) -> Prepared:
    """Check everything that can refuse the run; raise :class:`UsageError` or a plan error."""
    _check_options(plan, options)
    lanes = _lanes(plan, options, say)
    durable = None
    if not options.dry_run:  # a dry run opens no connection, lock or journal
        _ensure_open_files(plan, lanes, options)
        durable = _open_state(plan, lanes, options)
    return Prepared(plan, lanes, options, durable)


def _ensure_open_files(plan: Plan, lanes: tuple[Lane, ...], options: RunOptions) -> None:
    from orchestrator.run.openfiles import ensure_open_files, files_needed

    at_once = min(plan.settings.max_parallel_tokens, len(lanes))
    needed = files_needed(at_once, simulated=options.simulate)
    ensure_open_files(needed, lanes_at_once=at_once)


async def perform(prepared: Prepared, *, say: Say) -> int:
    """Run a prepared plan, print its summary on stderr and return the exit code."""
    from orchestrator.output.log import pick_format
    from orchestrator.run.execute import new_run_id

    options, durable = prepared.options, prepared.durable
    run_id = durable.run_id if durable else new_run_id()
    started_wall = time.time()
    log_format = pick_format(options.log_format, sys.stdout)
    async with contextlib.AsyncExitStack() as stack:
        result = await _run(prepared, run_id, log_format, stack)
        if durable is not None:
            _finish_journal(durable, run_id, result.exit_code, say)
    if options.metrics_file and not options.dry_run:
        _write_metrics(options.metrics_file, prepared.plan, run_id, started_wall, result, say)
    if result.error:
        say(f"orchestrator: {result.error}")
    totals = result.totals
    say(
        f"{totals['succeeded']} succeeded, {totals['failed']} failed, {totals['skipped']} skipped "
        f"in {result.duration_ms / 1000:.1f} s (run {run_id}, exit {result.exit_code})"
    )
    return result.exit_code


async def _run(
    prepared: Prepared, run_id: str, log_format: LogFormat, stack: contextlib.AsyncExitStack
) -> RunResult:
    from orchestrator.output.log import make_log
    from orchestrator.run.execute import Engine, RunSpec, execute

    plan, options, durable = prepared.plan, prepared.options, prepared.durable
    base_url = options.base_url or plan.settings.base_url
    if options.simulate and not options.dry_run:
        base_url = await _start_simulator(stack)
    progress = _progress(prepared, log_format, stack)
    stream = progress.log_stream() if progress else None
    logger, event_log = make_log(log_format, run_id, stream)
    spec = RunSpec(
        plan,
        prepared.lanes,
        base_url,
        logger,
        run_id,
        options.dry_run,
        options.report,
        event_log=event_log,
    )
    if durable is not None:
        spec = await _with_state(spec, durable, options, stack)
    with _fewer_collections():
        return await execute(spec, Engine(listeners=(progress,) if progress else ()))


def _progress(
    prepared: Prepared, log_format: LogFormat, stack: contextlib.AsyncExitStack
) -> Progress | None:
    if log_format != "console":
        return None  # no display: not even its module is loaded
    from orchestrator.output.progress import Progress, progress_wanted

    if not progress_wanted(log_format, sys.stderr):
        return None
    lanes, parallel = prepared.lanes, prepared.plan.settings.max_parallel_tokens
    return stack.enter_context(Progress(lanes, max_parallel=parallel))


#: Allocations between two collections of the youngest generation while a run sends
#: (Python's default is 700).
_RUN_GC_THRESHOLD = 20_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run with fewer passes of the cyclic garbage collector.

    With hundreds of lanes in flight, many young objects (requests, answers, events)
    are alive at once, so Python's default collects them over and over: about 15 % of
    a CPU-bound run's CPU (docs/performance.md). Everything loaded before the run (the
    plan, its lanes, the modules) lives until the end, so it is frozen out of every
    collection; the young generation is collected every 20,000 allocations instead of
    700. A run makes few reference cycles, so memory hardly grows.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], _RUN_GC_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _check_options(plan: Plan, options: RunOptions) -> None:
    from orchestrator.plan.validate import check_base_url

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
        folder = Path(path).resolve().parent if path else None
        if folder is not None and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise UsageError(f"{option}: cannot write into {folder}")


def _lanes(plan: Plan, options: RunOptions, say: Say) -> tuple[Lane, ...]:
    from orchestrator.plan.tokens import (
        build_lanes,
        missing_tokens,
        placeholder_tokens,
        read_tokens,
    )

    if options.simulate:
        lanes = build_lanes(plan.clears, placeholder_tokens(plan))
    elif options.dry_run and (warnings := missing_tokens(plan)):
        # A dry run shows the schedule even where tokens are absent, as validate does.
        for warning in warnings:
            say(warning)
        lanes = build_lanes(plan.clears, None)
    else:
        lanes = build_lanes(plan.clears, read_tokens(plan))
    if options.dry_run:
        from orchestrator.output.views import render_schedule

        say(render_schedule(plan, lanes))
    return lanes


def _open_state(plan: Plan, lanes: tuple[Lane, ...], options: RunOptions) -> Durable:
    """Open the journal and find the run to resume, before anything is sent."""
    from orchestrator.run.execute import new_run_id
    from orchestrator.state.journal import Journal, plan_digest, resolve_state_dir

    state_dir = resolve_state_dir(options.state_dir)
    journal = Journal.open(state_dir)
    digest = plan_digest(lanes)
    if options.resume is None:
        run_id = new_run_id()
        return Durable(journal, state_dir, digest, run_id, None, RunLock.take(state_dir, run_id))
    try:
        return _resumable(plan, lanes, journal, state_dir, digest, options.resume)
    except OrchestratorError:
        journal.close()
        raise


def _resumable(
    plan: Plan,
    lanes: tuple[Lane, ...],
    journal: Journal,
    state_dir: Path,
    digest: str,
    wanted: str,
) -> Durable:
    from orchestrator.run.execute import Resume

    run_id = None if wanted == LATEST else wanted
    record = journal.find_resumable(digest, run_id)
    if record is None:
        which = f"run {run_id}" if run_id else f"unfinished or failed run of {plan.source}"
        raise UsageError(f"--resume: found no {which} to resume in {journal.path}")
    if record.digest != digest:
        raise UsageError(
            f"--resume: run {record.run_id} was made from a different plan "
            f"(digest {record.digest[:12]}, this plan {digest[:12]}); nothing was sent"
        )
    run_lock = RunLock.take(state_dir, record.run_id)
    if run_lock is None:
        raise UsageError(f"--resume: run {record.run_id} is still running in another process")
    prior = journal.resume_run(record.run_id)
    # The lane that now runs each clear: its token may have been rotated since (same digest,
    # so the same seqs).
    token_of = {clear.seq: lane.token_id for lane in lanes for clear in lane.clears}
    resume = Resume(
        succeeded=frozenset(seq for seq, c in prior.items() if c.state == "succeeded"),
        # A call in flight at a crash, or cut by a second signal, may still be running at
        # wolkvox: its lane rests before it sends again.
        cooling_tokens=frozenset(token_of[seq] for seq, c in prior.items() if _maybe_running(c)),
    )
    return Durable(journal, state_dir, digest, record.run_id, resume, run_lock)


def _maybe_running(clear: ClearRecord) -> bool:
    # A failed clear whose last call got no HTTP answer (the transport could not tell
    # whether it arrived) or was cut by a second signal may have been cut in its rest
    # too: the journal cannot tell, so its token rests again before use.
    return clear.state == "in_flight" or (
        clear.state == "failed"
        and clear.attempts > 0
        and (clear.http_status is None or clear.reason == Reason.INTERRUPTED)
    )


async def _start_simulator(stack: contextlib.AsyncExitStack) -> str:
    from orchestrator.wolkvox.simulator import SERVER_PREFIX, Simulator

    simulator = await stack.enter_async_context(Simulator())
    return simulator.url + SERVER_PREFIX


async def _with_state(
    spec: RunSpec, durable: Durable, options: RunOptions, stack: contextlib.AsyncExitStack
) -> RunSpec:
    """Take the token locks, check the quota, then start (or reopen) the run in the journal."""
    from orchestrator.run.execute import utc_now

    stack.callback(durable.journal.close)
    if durable.run_lock is not None:
        stack.callback(durable.run_lock.release)
    locks = await _locks(
        durable.state_dir, options.lock_url or spec.plan.settings.lock_url, spec.plan
    )
    stack.push_async_callback(locks.aclose)
    if durable.resume is not None:
        spec = dataclasses.replace(spec, resume=durable.resume)
    if options.check_quota:
        # Before the journal knows of the run: a refused run leaves nothing to resume.
        await _check_quota(_still_to_do(spec), spec.base_url, locks)
    if durable.resume is None:
        durable.journal.begin_run(
            spec.run_id, spec.plan.source, durable.digest, spec.lanes, started_at=utc_now()
        )
    return dataclasses.replace(spec, recorder=durable.journal.listener(spec.run_id), locks=locks)


def _still_to_do(spec: RunSpec) -> tuple[Lane, ...]:
    done = spec.resume.succeeded
    lanes = (
        dataclasses.replace(lane, clears=tuple(c for c in lane.clears if c.seq not in done))
        for lane in spec.lanes
    )
    return tuple(lane for lane in lanes if lane.clears)


async def _locks(state_dir: Path, lock_url: str | None, plan: Plan) -> TokenLocks:
    # The longest a call can keep a token busy: Redis locks keep off every token that
    # long when Redis cannot prove it kept the leases of calls that may still run.
    fence_s = max((c.timeout_s for c in plan.clears), default=0.0) + plan.settings.cooldown_s
    return await open_token_locks(
        state_dir, lock_url, fence_s=fence_s, warn=lambda text: print(text, file=sys.stderr)
    )


def _finish_journal(durable: Durable, run_id: str, exit_code: int, say: Say) -> None:
    from orchestrator.run.execute import utc_now
    from orchestrator.state.journal import JournalError

    try:
        durable.journal.finish_run(run_id, exit_code=exit_code, finished_at=utc_now())
    except JournalError as exc:
        # The clears are done; the journal only misses the run's end, which --resume tolerates.
        say(f"orchestrator: warning: {exc}")


def _write_metrics(
    path: str, plan: Plan, run_id: str, started_wall: float, result: RunResult, say: Say
) -> None:
    from orchestrator.output.metrics import MetricsError, write_metrics

    try:
        write_metrics(
            path,
            plan=plan.source,
            run_id=run_id,
            started_at=started_wall,
            finished_at=time.time(),
            exit_code=result.exit_code,
            totals=result.totals,
            calls_per_token=result.calls_per_token,
            duration_s=result.duration_ms / 1000,
        )
    except MetricsError as exc:
        # The clears are done; a missing metrics file must not hide how they went.
        say(f"orchestrator: warning: {exc}")


async def _check_quota(lanes: tuple[Lane, ...], base_url: str, locks: TokenLocks) -> None:
    """Refuse to start when a lane's worst case needs more calls than its token has left."""
    from orchestrator.wolkvox.client import TokenInfoError, WolkvoxClient
    from orchestrator.wolkvox.quota import check_quota, render_quota
    from orchestrator.wolkvox.transport import AiohttpTransport

    try:
        async with AiohttpTransport(limit=max(1, min(len(lanes), 32))) as transport:
            lines = await check_quota(lanes, WolkvoxClient(transport, base_url), locks=locks)
    except TokenInfoError as exc:
        raise UsageError(f"--check-quota: {exc}; nothing was sent") from exc
    table = render_quota(lines)
    if not all(line.enough for line in lines):
        raise UsageError(f"--check-quota: not enough calls left today; nothing was sent\n{table}")
    print(table, file=sys.stderr, flush=True)
