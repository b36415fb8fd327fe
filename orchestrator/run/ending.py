"""How a run ends: one exit code, decided once, and told everywhere with the same words.

``run.finished``, the report, the metrics file, the journal and the process's own
exit code all carry what :meth:`Ending.decide` says, whatever stopped the run.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from orchestrator.errors import JournalError, MetricsError, OrchestratorError, Terminated
from orchestrator.output.metrics import write_metrics as write_metrics_file
from orchestrator.plan.model import Lane
from orchestrator.run.prepare import Prepared, State, utc_now
from orchestrator.wolkvox.redact import redact

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Say = Callable[[str], None]

#: Seqs of unrecorded clears the summary names before it says "...".
_SHOWN_SEQS = 10


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: the one exit code, and the counts every ending shows."""

    exit_code: int
    totals: dict[str, int]
    duration_ms: int
    #: Calls made per token_id, retries included: each spends the token's daily quota.
    calls_per_token: dict[str, int] = field(default_factory=dict)
    #: Why the run halted or failed early, when it did.
    error: str | None = None
    #: The exception that broke the run, when one did (its traceback goes to stderr).
    fault: BaseException | None = None
    #: Things that went wrong after the run ended (a report that could not be written).
    warnings: tuple[str, ...] = ()
    #: Clears whose outcome the journal could not record: ``--resume`` may send them again.
    unrecorded: tuple[int, ...] = ()


@dataclass(slots=True)
class Ending:
    """What the run learnt on its way, for the one decision of its exit code."""

    signum: int | None = None
    signals: int = 0
    recording_error: Exception | None = None
    calls_sent: int = 0
    fault: Exception | None = None

    def decide(self, *, all_succeeded: bool, lanes: tuple[Lane, ...]) -> tuple[int, str | None]:
        """The run's exit code, and why it halted or failed when it did."""
        if self.fault is not None:
            return EXIT_FAILED, f"the run failed: {describe(self.fault, lanes)}"
        if self.recording_error is not None:
            # Nothing sent means nothing changed: that is bad input, not a failed run.
            code = EXIT_USAGE if self.calls_sent == 0 else EXIT_FAILED
            return code, f"the run halted: {describe(self.recording_error, lanes)}"
        if self.signum is not None:
            return 128 + self.signum, None
        return (EXIT_OK if all_succeeded else EXIT_FAILED), None


def exit_code_of(exc: BaseException) -> int:
    """The exit code the process gets from ``exc`` leaving the run (see ``cli.main``)."""
    if isinstance(exc, KeyboardInterrupt | anyio.get_cancelled_exc_class()):
        return 128 + signal.SIGINT  # asyncio's runner cancels the run on SIGINT
    if isinstance(exc, Terminated):
        return 128 + signal.SIGTERM
    return EXIT_FAILED


def describe(exc: BaseException, lanes: tuple[Lane, ...]) -> str:
    """``exc`` in one line for an operator, without any token of ``lanes``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's wrapping says nothing
    text = str(exc) if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"
    return without_tokens(text, lanes)


def without_tokens(text: str, lanes: tuple[Lane, ...]) -> str:
    """``text`` with the token of every lane, and every token of every pool, masked."""
    # An exception nobody planned for may quote anything: no token leaves in its text.
    for lane in lanes:
        for token in lane.tokens:
            if token.secret is not None:
                text = redact(text, token.secret.reveal())
    return text


def finish_journal(state: State, run_id: str, exit_code: int, say: Say) -> None:
    """Mark the run finished with ``exit_code``; a journal that cannot is a warning."""
    try:
        state.journal.finish_run(run_id, exit_code=exit_code, finished_at=utc_now())
    except JournalError as exc:
        # The clears are done; the journal only misses the run's end, which --resume tolerates.
        say(f"orchestrator: warning: {exc}")


def write_metrics(
    path: str, prepared: Prepared, started_wall: float, result: RunResult, say: Say
) -> None:
    """Write the run's metrics file; a file that cannot be written is a warning."""
    try:
        write_metrics_file(
            path,
            plan=prepared.plan.source,
            run_id=prepared.run_id,
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


def tell(result: RunResult, prepared: Prepared, say: Say) -> None:
    """The summary on stderr, for the operator."""
    for warning in result.warnings:
        say(f"orchestrator: warning: {warning}")
    if result.fault is not None:
        trace = "".join(traceback.format_exception(result.fault))
        say(without_tokens(trace.rstrip(), prepared.lanes))
    if result.error:
        say(f"orchestrator: {result.error}")
    if result.unrecorded:
        shown = ", ".join(str(seq) for seq in result.unrecorded[:_SHOWN_SEQS])
        more = ", ..." if len(result.unrecorded) > _SHOWN_SEQS else ""
        say(
            f"orchestrator: the journal could not record the outcome of "
            f"{len(result.unrecorded)} clear(s) ({shown}{more}): --resume may send them again"
        )
    totals = result.totals
    # A dry run has no id to give: it is not journaled, so ``show`` could not find one.
    run = "dry run, not journaled" if prepared.run_id is None else f"run {prepared.run_id}"
    say(
        f"{totals['succeeded']} succeeded, {totals['failed']} failed, {totals['skipped']} skipped "
        f"in {result.duration_ms / 1000:.1f} s ({run}, exit {result.exit_code})"
    )
