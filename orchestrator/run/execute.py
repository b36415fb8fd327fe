"""One run from start to end: log, schedule, send, report.

The CLI builds a :class:`RunSpec` and calls :func:`execute`; everything a run
does between ``run.started`` and ``run.finished`` happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.output.log import EventLog
from orchestrator.output.report import ReportCollector, write_json_atomically
from orchestrator.plan.model import Lane, Plan
from orchestrator.run.events import ClearFinished, Listener, Outcome, Reason, Recorder
from orchestrator.run.scheduler import Backoff, Clock, Scheduler, default_backoff
from orchestrator.state.locks import TokenLocks
from orchestrator.wolkvox.client import Transport, WolkvoxClient

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class Resume:
    """What a resumed run carries over from the run it continues."""

    #: Clears that succeeded before: not sent again.
    succeeded: frozenset[int] = frozenset()
    #: Tokens whose call was in flight when the process died: they rest first.
    cooling_tokens: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a run needs, already validated."""

    plan: Plan
    lanes: tuple[Lane, ...]
    base_url: str
    logger: Any
    run_id: str
    dry_run: bool = False
    report_path: str | None = None
    #: Records each event durably before the run goes on (the journal).
    recorder: Recorder | None = None
    locks: TokenLocks | None = None
    resume: Resume = field(default_factory=Resume)
    #: Logs each clear event; by default an :class:`EventLog` on ``logger``.
    event_log: Listener | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended."""

    exit_code: int
    totals: dict[str, int]
    duration_ms: int
    #: Calls made per token_id, retries included: each spends the token's daily quota.
    calls_per_token: dict[str, int] = field(default_factory=dict)
    #: Why the run halted early, when it could not record its progress.
    error: str | None = None


@dataclass(slots=True)
class Engine:
    """Replaceable parts of a run: tests swap the transport, the clock and backoff."""

    transport: Transport | None = None
    clock: Clock | None = None
    backoff: Backoff = default_backoff
    listeners: tuple[Listener, ...] = field(default=())
    handle_signals: bool = True


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261128T045500Z-3fa9c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


async def execute(spec: RunSpec, engine: Engine | None = None) -> RunResult:
    """Run ``spec`` and return how it ended; write the report whatever happened."""
    parts = engine or Engine()
    started_at, started = utc_now(), time.monotonic()
    collector = ReportCollector(keep_clears=spec.report_path is not None)
    event_log = spec.event_log or EventLog(spec.logger)
    listeners: tuple[Listener, ...] = (event_log, collector, *parts.listeners)
    spec.logger.info(
        "run.started",
        plan=spec.plan.source,
        clears=sum(len(lane.clears) for lane in spec.lanes),
        tokens=len(spec.lanes),
        dry_run=spec.dry_run,
    )
    outcome = _Ending()
    try:
        if spec.dry_run:
            _pretend(spec.lanes, listeners)  # a dry run records nothing: it sent nothing
        else:
            await _schedule(spec, parts, listeners, outcome)
    finally:
        result = _conclude(spec, collector, outcome, started)
        _write_report(spec, collector, result, started_at)
    return result


@dataclass(slots=True)
class _Ending:
    signum: int | None = None
    recording_error: Exception | None = None
    calls_sent: int = 0


async def _schedule(
    spec: RunSpec, parts: Engine, listeners: tuple[Listener, ...], ending: _Ending
) -> None:
    running = min(spec.plan.settings.max_parallel_tokens, len(spec.lanes))
    async with contextlib.AsyncExitStack() as stack:
        transport = parts.transport
        if transport is None:
            from orchestrator.wolkvox.transport import (
                AiohttpTransport,  # aiohttp: loaded only to send
            )

            transport = await stack.enter_async_context(AiohttpTransport(limit=max(1, running)))
        client = WolkvoxClient(transport, spec.base_url)
        scheduler = Scheduler(
            spec.lanes,
            client.clear,
            max_parallel=spec.plan.settings.max_parallel_tokens,
            cooldown_s=spec.plan.settings.cooldown_s,
            listeners=listeners,
            recorder=spec.recorder,
            clock=parts.clock,
            backoff=parts.backoff,
            locks=spec.locks,
            already_succeeded=spec.resume.succeeded,
            cooling_tokens=spec.resume.cooling_tokens,
        )
        received: list[int] = []
        try:
            with _signals_to(scheduler, received, spec.logger, enabled=parts.handle_signals):
                await scheduler.run()
        finally:
            ending.signum = received[0] if received else None
            ending.recording_error = scheduler.recording_error
            ending.calls_sent = scheduler.calls_sent
        if spec.recorder is not None and ending.recording_error is None:
            try:
                await spec.recorder.settle()  # the last outcomes
            except Exception as exc:
                ending.recording_error = exc


@contextlib.contextmanager
def _signals_to(
    scheduler: Scheduler, received: list[int], logger: Any, *, enabled: bool
) -> Iterator[None]:
    """Route SIGINT and SIGTERM to the scheduler for as long as it runs."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        in_flight, resting = scheduler.in_flight, scheduler.resting
        scheduler.interrupt()
        # Said at once, so an operator knows the signal arrived and what a second one does.
        logger.warning(
            "run.interrupted",
            signal=signal.Signals(signum).name,
            calls_in_flight=in_flight,
            tokens_resting=resting,
            cut=len(received) > 1,
        )

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _pretend(lanes: tuple[Lane, ...], listeners: tuple[Listener, ...]) -> None:
    for lane in lanes:
        for clear in lane.clears:
            event = ClearFinished(clear, lane.token_id, Outcome.SKIPPED, Reason.DRY_RUN, 0, None, 0)
            for listener in listeners:
                listener(event)


def _conclude(
    spec: RunSpec, collector: ReportCollector, ending: _Ending, started: float
) -> RunResult:
    totals = collector.totals()
    error = None
    if ending.recording_error is not None:
        error = f"the run halted: {_describe(ending.recording_error)}"
        # Nothing sent means nothing changed: that is bad input, not a failed run.
        exit_code = EXIT_USAGE if ending.calls_sent == 0 else EXIT_FAILED
    elif ending.signum is not None:
        exit_code = 128 + ending.signum
    elif spec.dry_run or collector.all_succeeded():
        exit_code = EXIT_OK
    else:
        exit_code = EXIT_FAILED
    duration_ms = round((time.monotonic() - started) * 1000)
    fields: dict[str, object] = {**totals, "duration_ms": duration_ms, "exit_code": exit_code}
    fields["calls_per_token"] = collector.calls_per_token
    if error is not None:
        fields["error"] = error
    log = spec.logger.error if error else spec.logger.info
    log("run.finished", **fields)
    return RunResult(exit_code, totals, duration_ms, collector.calls_per_token, error)


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"


def _write_report(
    spec: RunSpec, collector: ReportCollector, result: RunResult, started_at: str
) -> None:
    if spec.report_path is None:
        return
    write_json_atomically(
        spec.report_path,
        {
            "run_id": spec.run_id,
            "plan": spec.plan.source,
            "dry_run": spec.dry_run,
            "started_at": started_at,
            "finished_at": utc_now(),
            "exit_code": result.exit_code,
            "totals": result.totals,
            "calls_per_token": result.calls_per_token,
            "error": result.error,
            "clears": collector.clears(),
        },
    )


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
