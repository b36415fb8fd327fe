"""How a run ends: one exit code, decided once, and told everywhere with the same words.

``run.finished``, the report, the metrics file, the journal and the process's own
exit code all carry what :meth:`Ending.decide` says, whatever stopped the run.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

import anyio

from orchestrator.errors import JournalError, MetricsError, Terminated
from orchestrator.output.console import plural
from orchestrator.output.log import console_line
from orchestrator.output.metrics import write_metrics as write_metrics_file
from orchestrator.plan.model import Lane
from orchestrator.run.events import ClearFinished
from orchestrator.run.lanes import reason_of
from orchestrator.run.prepare import Prepared, Say, State, utc_now
from orchestrator.wolkvox.redact import redact

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Seqs of unrecorded clears the summary names before it says "...".
_SHOWN_SEQS = 10
#: The widest line of the ending's list of clears not done: read once rather than
#: watched scrolling by, so it keeps more of wolkvox's answer than a log line.
_LIST_WIDTH = 160


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
    #: The first clears that failed or were skipped, which the summary names.
    not_done: tuple[ClearFinished, ...] = ()


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
    return without_tokens(reason_of(exc), lanes)


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


def tell(result: RunResult, prepared: Prepared, say: Say, *, journaled: bool) -> None:
    """The summary on stderr, for the operator: what went wrong, the counts, what to do now.

    ``journaled``: the run is in the journal, so ``show`` finds it and ``--resume`` can
    continue it.
    """
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
    state_dir = prepared.options.state_dir
    show = show_command(prepared.run_id, state_dir) if journaled and prepared.run_id else None
    for line in _not_done(result, show):
        say(line)
    say(_counts(result, prepared))
    if result.exit_code != EXIT_OK and journaled and prepared.options.resume_command:
        again = shlex.join((*prepared.options.resume_command, f"--resume={prepared.run_id}"))
        say(f"to resume: {again}")


def _counts(result: RunResult, prepared: Prepared) -> str:
    """``10 succeeded, 15 already succeeded, 0 failed, 0 skipped in 1.2 s (run ..., exit 0)``."""
    totals = result.totals
    resumed = prepared.state is not None and prepared.state.resume is not None
    already = totals.get("already_succeeded", 0)
    before = f"{already} already succeeded, " if resumed or already else ""
    # A dry run has no id to give: it is not journaled, so ``show`` could not find one.
    run = "dry run, not journaled" if prepared.run_id is None else f"run {prepared.run_id}"
    return (
        f"{totals['succeeded']} succeeded, {before}{totals['failed']} failed, "
        f"{totals['skipped']} skipped in {result.duration_ms / 1000:.1f} s "
        f"({run}, exit {result.exit_code})"
    )


def _not_done(result: RunResult, show: str | None) -> list[str]:
    """The clears that failed or were skipped, as the console log shows them, the first few."""
    if not result.not_done:
        return []
    encoding = getattr(sys.stderr, "encoding", None)
    lines = ["failed or skipped:"]
    lines.extend(
        f"  {console_line(event, encoding=encoding, width=_LIST_WIDTH - 2)}"
        for event in sorted(result.not_done, key=lambda event: event.clear.seq)
    )
    rest = result.totals["failed"] + result.totals["skipped"] - len(result.not_done)
    if rest > 0:
        lines.append(f"  and {rest} more" + (f" ({show} lists every clear)" if show else ""))
    return lines


def show_command(run_id: str, state_dir: str | None) -> str:
    """The command that lists every clear of ``run_id`` from the journal."""
    where = ("--state-dir", state_dir) if state_dir else ()
    return shlex.join(("orchestrator", "show", run_id, *where))


def explain_interrupt(signum: int, in_flight: int, resting: int, *, cut: bool) -> str:
    """What a signal does to the run, for stderr: said at the first signal, and at the cut.

    ``in_flight`` calls are waiting for their answer; ``resting`` tokens wait out their
    cooldown after a call whose outcome is unknown (wolkvox may still be working on it).
    """
    calls = plural(in_flight, "call")
    tokens = plural(resting, "token")
    if cut:
        cutting = [f"{calls} in flight"] if in_flight else []
        cutting += [f"the cooldown of {tokens}"] if resting else []
        if not cutting:
            return "orchestrator: interrupted again: nothing is left to cut"
        return (
            f"orchestrator: interrupted again: cutting {' and '.join(cutting)}; the outcome "
            "of a cut call is unknown, and --resume rests its token before using it again"
        )
    name = "interrupted" if signum == signal.SIGINT else signal.Signals(signum).name
    if not (in_flight or resting):
        return f"orchestrator: {name}: nothing new starts, and no call is in flight"
    waiting = []
    if in_flight:
        waiting.append(f"letting {calls} in flight finish")
    if resting:
        waiting.append(f"{tokens} resting after an unknown outcome")
    again = "Press Ctrl-C again" if signum == signal.SIGINT else "Send a second signal"
    return (
        f"orchestrator: {name}: nothing new starts; {', '.join(waiting)}. "
        f"{again} to cut them: their outcome is then unknown."
    )


def explain_log_cut(exc: Exception, prepared: Prepared) -> str:
    """What a log that could not be written means, said once on stderr."""
    why = (
        exc.strerror if isinstance(exc, OSError) and exc.strerror else describe(exc, prepared.lanes)
    )
    said = f"orchestrator: the log on stdout was cut ({why})"
    options = prepared.options
    if options.dry_run or prepared.run_id is None:
        return f"{said}; the dry run goes on"
    keep = "the report and the journal keep" if options.report else "the journal keeps"
    show = show_command(prepared.run_id, options.state_dir)
    return f"{said}; the run goes on: {keep} the record ({show} lists every clear)"
