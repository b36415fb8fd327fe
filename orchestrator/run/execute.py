"""Step two of a run: open what it needs, send, and end it honestly.

:func:`perform` takes a :class:`~orchestrator.run.prepare.Prepared` run and opens,
in one :class:`contextlib.AsyncExitStack`, what only an event loop can open (the
simulator, the token locks, the quota check); a refusal there still sends no clear
and writes nothing to the journal. Then :func:`execute` runs it from ``run.started``
to ``run.finished``. Whatever happens in between, one exit code is decided once and
carried by ``run.finished``, the report, the metrics file, the journal and the
process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from orchestrator.errors import (
    OrchestratorError,
    ReportError,
    Terminated,
    TokenInfoError,
    UsageError,
)
from orchestrator.output.log import EventLog, LineWriter, make_logger, pick_format, pool_token_names
from orchestrator.output.progress import Progress, progress_wanted
from orchestrator.output.report import ReportCollector, pool_campaigns, write_json_atomically
from orchestrator.plan.model import Lane, Plan, count_tokens
from orchestrator.run.clock import Clock
from orchestrator.run.ending import (
    EXIT_USAGE,
    Ending,
    RunResult,
    exit_code_of,
    explain_interrupt,
    explain_log_cut,
    finish_journal,
    tell,
    write_metrics,
)
from orchestrator.run.events import ClearFinished, Listener, Outcome, Reason, Recorder
from orchestrator.run.prepare import Prepared, Resume, Say, State, utc_now
from orchestrator.run.scheduler import Backoff, Scheduler, default_backoff
from orchestrator.state.locks import TokenLocks, open_token_locks
from orchestrator.wolkvox.client import Transport, WolkvoxClient
from orchestrator.wolkvox.quota import DEFAULT_MAX_PARALLEL, check_quota, render_quota
from orchestrator.wolkvox.simulator import SERVER_PREFIX, Simulator
from orchestrator.wolkvox.transport import AiohttpTransport


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a run needs, already checked and opened."""

    plan: Plan
    lanes: tuple[Lane, ...]
    base_url: str
    logger: Any
    #: ``None`` for a dry run: it is never journaled, so it has no id ``show`` could find.
    run_id: str | None
    dry_run: bool = False
    #: Sent to the built-in simulator (``--simulate``), not to wolkvox.
    simulated: bool = False
    report_path: str | None = None
    #: Records each event durably before the run goes on (the journal).
    recorder: Recorder | None = None
    locks: TokenLocks | None = None
    resume: Resume = field(default_factory=Resume)
    #: Where the log's lines go, to tell whether the log was cut.
    log_lines: LineWriter | None = None


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Engine:
    """Replaceable parts of a run: tests swap the transport, the clock and backoff."""

    transport: Transport | None = None
    clock: Clock | None = None
    backoff: Backoff = default_backoff
    listeners: tuple[Listener, ...] = ()
    handle_signals: bool = True
    #: Where what a signal does is said, for the operator.
    say: Say = _to_stderr


async def perform(prepared: Prepared, *, say: Say, engine: Engine | None = None) -> int:
    """Open, run and end a prepared run; print its summary on stderr; return the exit code."""
    parts = engine or Engine()
    options, state = prepared.options, prepared.state
    started_wall = time.time()
    result: RunResult | None = None
    begun = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            spec, display = await _open(prepared, stack, say)
            begun = spec.recorder is not None
            result = await execute(
                spec, dataclasses.replace(parts, listeners=parts.listeners + display, say=say)
            )
    except BaseException as exc:
        if begun and state is not None:
            finish_journal(state, state.run_id, exit_code_of(exc), say)
        raise
    if begun and state is not None:
        finish_journal(state, state.run_id, result.exit_code, say)
    if options.metrics_file and not options.dry_run:
        write_metrics(options.metrics_file, prepared, started_wall, result, say)
    tell(result, prepared, say, journaled=begun)
    return result.exit_code


async def _open(
    prepared: Prepared, stack: contextlib.AsyncExitStack, say: Say
) -> tuple[RunSpec, tuple[Listener, ...]]:
    """What the run needs beyond :func:`prepare`; a refusal here leaves nothing behind."""
    plan, options = prepared.plan, prepared.options
    base_url = prepared.base_url
    if options.simulate and not options.dry_run:
        simulator = await stack.enter_async_context(Simulator())
        base_url = simulator.url + SERVER_PREFIX
    log_format = pick_format(options.log_format, sys.stdout)
    progress = None
    if progress_wanted(sys.stderr):
        parallel = plan.settings.max_parallel_tokens
        progress = stack.enter_context(
            Progress(prepared.lanes, max_parallel=parallel, estimates=prepared.estimates)
        )
    lines = LineWriter(
        progress.log_stream() if progress else sys.stdout,
        on_cut=lambda exc: say(explain_log_cut(exc, prepared)),
    )
    spec = RunSpec(
        plan,
        prepared.lanes,
        base_url,
        make_logger(log_format, prepared.run_id, lines),
        prepared.run_id,
        dry_run=options.dry_run,
        simulated=options.simulate,
        report_path=options.report,
        log_lines=lines,
    )
    if prepared.state is not None:
        spec = await _with_state(spec, prepared.state, prepared, stack)
    return spec, (progress,) if progress else ()


async def _with_state(
    spec: RunSpec, state: State, prepared: Prepared, stack: contextlib.AsyncExitStack
) -> RunSpec:
    """Take the token locks, check the quota, then write the run's start to the journal."""
    options, run_id = prepared.options, state.run_id
    lock_url = options.lock_url or spec.plan.settings.lock_url
    # The longest a call can keep a token busy: Redis locks keep off every token that
    # long when Redis cannot prove it kept the leases of calls that may still run.
    plan = spec.plan
    fence_s = max((c.timeout_s for c in plan.clears), default=0.0) + plan.settings.cooldown_s
    locks: TokenLocks = await open_token_locks(
        state.state_dir, lock_url, fence_s=fence_s, warn=lambda text: print(text, file=sys.stderr)
    )
    stack.push_async_callback(locks.aclose)
    resume = state.resume or Resume()
    if options.check_quota:
        await _check_quota(_still_to_do(spec.lanes, resume), spec.base_url, locks)
    # The journal's first change, made only once every check passed and the operator
    # said yes: a run refused up to here leaves the journal as it was.
    if state.resume is None:
        state.journal.begin_run(
            run_id,
            spec.plan.source,
            state.digest,
            spec.lanes,
            started_at=utc_now(),
            base_url=spec.base_url,
            simulated=spec.simulated,
        )
    else:
        state.journal.resume_run(run_id, base_url=spec.base_url)
    try:
        recorder = state.journal.listener(run_id)
    except OrchestratorError:
        # Begun but refused before anything was sent: the journal says so.
        finish_journal(state, run_id, EXIT_USAGE, lambda text: None)
        raise
    return dataclasses.replace(spec, recorder=recorder, locks=locks, resume=resume)


def _still_to_do(lanes: tuple[Lane, ...], resume: Resume) -> tuple[Lane, ...]:
    left = (
        dataclasses.replace(
            lane, clears=tuple(c for c in lane.clears if c.seq not in resume.succeeded)
        )
        for lane in lanes
    )
    return tuple(lane for lane in left if lane.clears)


async def _check_quota(lanes: tuple[Lane, ...], base_url: str, locks: TokenLocks) -> None:
    """Refuse to start when a lane's worst case needs more calls than its token has left."""
    at_once = max(1, min(len(lanes), DEFAULT_MAX_PARALLEL))  # the calls check_quota makes
    try:
        async with AiohttpTransport(limit=at_once) as transport:
            lines = await check_quota(lanes, WolkvoxClient(transport, base_url), locks=locks)
    except TokenInfoError as exc:
        raise UsageError(f"--check-quota: {exc}; nothing was sent") from exc
    table = render_quota(lines)
    if not all(line.enough for line in lines):
        raise UsageError(f"--check-quota: not enough calls left today; nothing was sent\n{table}")
    print(table, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- the run


async def execute(spec: RunSpec, engine: Engine | None = None) -> RunResult:
    """Run ``spec`` from ``run.started`` to ``run.finished``; write the report whatever happened.

    An unexpected exception does not escape: it ends the run with exit code 1, as a
    failed run, so that everything that tells how the run ended says the same.
    """
    parts = engine or Engine()
    started_at, started = utc_now(), time.monotonic()
    collector = ReportCollector(keep_clears=spec.report_path is not None)
    log = EventLog(spec.logger, pool_tokens=pool_token_names(spec.lanes))
    listeners: tuple[Listener, ...] = (log, collector, *parts.listeners)
    spec.logger.info(
        "run.started",
        plan=spec.plan.source,
        clears=sum(len(lane.clears) for lane in spec.lanes),
        tokens=count_tokens(spec.lanes),
        dry_run=spec.dry_run,
        base_url=_target(spec),
        simulated=spec.simulated,
    )
    ending = Ending()
    try:
        if spec.dry_run:
            _pretend(spec.lanes, listeners)  # a dry run records nothing: it sent nothing
        else:
            await _schedule(spec, parts, listeners, ending)
    except Terminated:
        # SIGTERM came before the scheduler took the signals over: nothing was sent.
        ending.signum = signal.SIGTERM
    except Exception as exc:
        ending.fault = exc
    result = _conclude(spec, collector, ending, started)
    warnings = _write_report(spec, collector, result, started_at)
    return dataclasses.replace(result, warnings=warnings)


async def _schedule(
    spec: RunSpec, parts: Engine, listeners: tuple[Listener, ...], ending: Ending
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        transport = parts.transport
        if transport is None:
            running = min(spec.plan.settings.max_parallel_tokens, count_tokens(spec.lanes))
            transport = await stack.enter_async_context(AiohttpTransport(limit=max(1, running)))
        scheduler = Scheduler(
            spec.lanes,
            WolkvoxClient(transport, spec.base_url).clear,
            max_parallel=spec.plan.settings.max_parallel_tokens,
            cooldown_s=spec.plan.settings.cooldown_s,
            listeners=listeners,
            recorder=spec.recorder,
            clock=parts.clock,
            backoff=parts.backoff,
            locks=spec.locks,
            already_succeeded=spec.resume.succeeded,
            cooling_tokens=spec.resume.cooling_tokens,
            maintenance_wait_s=spec.plan.settings.maintenance_wait_s,
        )
        try:
            async with anyio.create_task_group() as group:
                if parts.handle_signals:
                    await group.start(_route_signals, scheduler, spec.logger, ending, parts.say)
                await scheduler.run()
                group.cancel_scope.cancel()  # the signals' route: the run is over
        finally:
            ending.recording_error = scheduler.recording_error
            ending.calls_sent = scheduler.calls_sent
    if spec.recorder is not None and ending.recording_error is None:
        try:
            await spec.recorder.settle()  # the last outcomes
        except Exception as exc:
            ending.recording_error = exc


async def _route_signals(
    scheduler: Scheduler,
    logger: Any,
    ending: Ending,
    say: Say,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hand SIGINT and SIGTERM to the scheduler for as long as it runs.

    The first signal and the second (which cuts) are each explained once on stderr,
    where the operator who pressed Ctrl-C looks; the log records every signal.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        task_status.started()
        async for signum in received:
            ending.signals += 1
            if ending.signum is None:
                ending.signum = signum
            in_flight, resting = scheduler.in_flight, scheduler.resting
            scheduler.interrupt()
            if ending.signals <= 2:
                cut = ending.signals == 2
                say(explain_interrupt(signum, in_flight, resting, cut=cut))
            # Said at once, so an operator knows the signal arrived and what a second one does.
            logger.warning(
                "run.interrupted",
                signal=signal.Signals(signum).name,
                calls_in_flight=in_flight,
                tokens_resting=resting,
                cut=ending.signals > 1,
            )


def _pretend(lanes: tuple[Lane, ...], listeners: tuple[Listener, ...]) -> None:
    for lane in lanes:
        for clear in lane.clears:
            event = ClearFinished(clear, lane.token_id, Outcome.SKIPPED, Reason.DRY_RUN, 0, None, 0)
            for listener in listeners:
                listener(event)


def _target(spec: RunSpec) -> str | None:
    """Where the run sends: the API's URL template; ``None`` for a simulated dry run,
    which starts no simulator and so has no URL to send to."""
    return None if spec.simulated and spec.dry_run else spec.base_url


# -------------------------------------------------------------------- the ending


def _conclude(
    spec: RunSpec, collector: ReportCollector, ending: Ending, started: float
) -> RunResult:
    """Decide the exit code, once, and log ``run.finished`` with it."""
    all_succeeded = spec.dry_run or collector.all_succeeded()
    exit_code, error = ending.decide(all_succeeded=all_succeeded, lanes=spec.lanes)
    totals = collector.totals()
    duration_ms = round((time.monotonic() - started) * 1000)
    fields: dict[str, object] = {**totals, "duration_ms": duration_ms, "exit_code": exit_code}
    fields["calls_per_token"] = collector.calls_per_token
    if error is not None:
        fields["error"] = error
    unrecorded = tuple(sorted(collector.unrecorded))
    if unrecorded:
        fields["unrecorded"] = len(unrecorded)
    log = spec.logger.error if error else spec.logger.info
    log("run.finished", **fields)
    return RunResult(
        exit_code,
        totals,
        duration_ms,
        collector.calls_per_token,
        error,
        ending.fault,
        unrecorded=unrecorded,
        not_done=tuple(collector.not_done),
    )


def _write_report(
    spec: RunSpec, collector: ReportCollector, result: RunResult, started_at: str
) -> tuple[str, ...]:
    if spec.report_path is None:
        return ()
    try:
        write_json_atomically(
            spec.report_path,
            {
                "run_id": spec.run_id,
                "plan": spec.plan.source,
                "dry_run": spec.dry_run,
                "base_url": _target(spec),
                "simulated": spec.simulated,
                "started_at": started_at,
                "finished_at": utc_now(),
                "exit_code": result.exit_code,
                "totals": result.totals,
                "calls_per_token": result.calls_per_token,
                "error": result.error,
                "unrecorded": list(result.unrecorded),
                "log_cut": spec.log_lines is not None and spec.log_lines.cut,
                "clears": collector.clears(spec.lanes),
                "pool_campaigns": pool_campaigns(spec.lanes, collector),
            },
        )
    except ReportError as exc:
        # The clears are done; a missing report must not hide how they went.
        return (str(exc),)
    return ()
