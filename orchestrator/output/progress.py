"""Live progress of a run on a terminal: counts, each running lane's clear, time left.

A :class:`Progress` is a scheduler listener and a context manager around a
``rich.live.Live`` on stderr, so stdout stays the log. It is shown wherever a
person watches stderr (:func:`progress_wanted`), whatever stdout is: ``run ... >
run.jsonl`` on a terminal shows it too. When stdout is the same terminal,
:meth:`Progress.log_stream` gives the logger a stream whose lines are printed
above the display instead of through it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TextIO, cast

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.output.streams import ConsoleLines, is_terminal
from orchestrator.plan.model import Clear, Lane, TokenPool, count_tokens
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    RestReason,
    TokenLeftPool,
    TokenResting,
    TokenWaiting,
    tally_of,
)
from orchestrator.run.order import DEFAULT_CLEAR_S, Estimates

#: Redraws per second: enough for a countdown, cheap beside the event loop.
REFRESH_PER_SECOND = 4
#: Running lanes listed at most; the others are summed up in one line.
MAX_ROWS = 12
#: Skip reasons that mean the whole run is stopping, not just one lane.
_HALT_REASONS = frozenset({"interrupted", "aborted", "recording_failed"})
#: Longest piece of an answer's error text shown in a lane's row.
_MAX_WHY_CHARS = 40


def progress_wanted(stderr: TextIO) -> bool:
    """True when a live display should be shown: whenever ``stderr`` is a terminal.

    Whatever stdout is and whichever log format it carries: the display is drawn on
    stderr, so a JSON log redirected to a file or a pipe stays whole.
    """
    return is_terminal(stderr)


class _State(Enum):
    QUEUED = "queued"
    WAITING = "waiting"
    SENDING = "sending"
    RETRYING = "retrying"
    RESTING = "resting"
    BETWEEN = "between"
    DONE = "done"


#: States in which a clear of the lane is under way (time spent on it counts towards it).
_WORKING = frozenset({_State.WAITING, _State.SENDING, _State.RETRYING, _State.RESTING})

#: Why a token rests, in a word or two.
_REST_WHY = {
    RestReason.OUTCOME_UNKNOWN: "outcome unknown",
    RestReason.IN_FLIGHT_AT_RESUME: "resumed",
    RestReason.MAINTENANCE: "maintenance",
    RestReason.BUSY_ELSEWHERE: "busy elsewhere",
}


@dataclass(slots=True)
class _LaneView:
    """What the display knows about one lane; updated in place, never resized."""

    #: The token's reference as the plan names it (``env:TOK_A``), never its value.
    label: str
    total: int
    done: int = 0
    state: _State = _State.QUEUED
    clear: Clear | None = None
    attempt: int = 0
    #: Clock time the current clear began (its first event).
    began_at: float = 0.0
    waited_s: float | None = None
    retry_at: float = 0.0
    #: Clock time the token's rest ends (after a timeout, on resume, in maintenance).
    rest_until: float = 0.0
    why: str = ""
    last: str = ""
    #: Tokens serving the lane: a pool's spread its work.
    tokens: int = 1
    #: Expected seconds of the clears left that the journal has durations of.
    known_left_s: float = 0.0
    #: Clears left that the journal has no duration of.
    unknown_left: int = 0
    #: A pool's lane: a row per token, each showing the campaign that token is on.
    rows: dict[str, _LaneView] = field(default_factory=dict)


class Progress:
    """A live display of a run: a scheduler listener and a context manager.

    Each event updates a few counters in O(1); the display is drawn from them a few
    times per second by rich's refresh thread (:meth:`render`). A token is shown by its
    reference (``env:TOK_A``), as ``validate`` names it, never by its value.
    """

    def __init__(
        self,
        lanes: Sequence[Lane],
        *,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_parallel: int | None = None,
        estimates: Estimates | None = None,
    ) -> None:
        self._console = console if console is not None else Console(file=sys.stderr)
        self._clock = clock
        self._estimates = estimates or Estimates()
        self._lanes = [
            _LaneView(", ".join(lane.token_names), len(lane.clears), tokens=len(lane.tokens))
            for lane in lanes
        ]
        for lane, view in zip(lanes, self._lanes, strict=True):
            for token in lane.pool:
                view.rows[token.token_id] = _LaneView(", ".join(token.token_names), view.total)
            for clear in lane.clears:
                if self._estimates.known(clear):
                    view.known_left_s += self._estimates.of(clear)
                else:
                    view.unknown_left += 1
        # By seq, not token_id: a clear belongs to exactly one lane whatever the tokens.
        self._lane_of = {
            c.seq: view for lane, view in zip(lanes, self._lanes, strict=True) for c in lane.clears
        }
        self._total = sum(view.total for view in self._lanes)
        tokens = count_tokens(lanes)
        slots = max_parallel if max_parallel is not None else tokens
        self._parallel = max(1, min(slots, tokens))
        self._counts = {"succeeded": 0, "failed": 0, "skipped": 0}
        self._timed = 0
        self._timed_s = 0.0
        self._halting: str | None = None
        self._fault: str | None = None
        self._started_at = clock()
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        """Start the live display on the console (stderr unless given)."""

        self._started_at = self._clock()
        self._live = Live(
            console=self._console,
            get_renderable=self.render,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            # Stray writes to stderr (warnings, messages) land above the display, not in it.
            redirect_stderr=True,
        )
        self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the display and erase it: the log and the summary tell the rest."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def __call__(self, event: Event) -> None:
        """Take one scheduler event into account."""
        if self._fault is not None or isinstance(event, TokenLeftPool):
            return
        try:
            if isinstance(event, ClearFinished):
                self._on_finished(event)
            elif (view := self._row(event)) is not None:
                self._begin(view, event.clear)
                self._step(view, event)
        except Exception as exc:
            # The scheduler halts the run when a listener raises; a display fault must not.
            self._fault = f"{type(exc).__name__}: {exc}"

    def log_stream(self, stdout: TextIO | None = None) -> TextIO:
        """A stream for :func:`~orchestrator.output.log.make_logger` that keeps the display whole.

        When ``stdout`` (default ``sys.stdout``) is a terminal, each line written is
        printed through the live console, above the display; otherwise ``stdout`` itself
        is returned, so a redirected log stays in its file.
        """
        target = stdout if stdout is not None else sys.stdout
        if not is_terminal(target):
            return target
        return cast(TextIO, ConsoleLines(self._console))

    def render(self) -> RenderableType:
        """The display as it is now."""

        try:
            return self._compose(self._clock())
        except Exception as exc:
            # rich's refresh thread dies on an exception; show the problem instead.
            return Text(f"progress display failed: {type(exc).__name__}: {exc}")

    # Events: each touches one lane and a few counters.

    def _row(self, event: Event) -> _LaneView | None:
        """Where an event shows: its lane, or in a pool, the row of the token that sent it."""
        view = self._lane_of.get(event.clear.seq)
        if view is None or not view.rows:
            return view
        if view.state is _State.QUEUED:
            view.state = _State.BETWEEN  # the pool is under way
        row = view.rows.get(event.token_id)
        if row is not None:
            row.done = view.done  # the pool's clears done, as the row's count shows
        return row

    def _begin(self, view: _LaneView, clear: Clear) -> None:
        if view.clear is not None and view.clear.seq == clear.seq and view.state in _WORKING:
            return
        view.clear, view.attempt, view.waited_s, view.why = clear, 0, None, ""
        view.rest_until = 0.0
        # Two references holding one token share a lane: name the one this clear uses.
        if not isinstance(clear.token, TokenPool):
            view.label = str(clear.token)
        view.began_at = self._clock()

    def _step(self, view: _LaneView, event: Event) -> None:
        """A clear under way: waiting for its token, resting, sent, or to be sent again."""
        match event:
            case TokenWaiting():
                view.state, view.waited_s = _State.WAITING, event.waited_s
            case TokenResting():
                view.state, view.rest_until = _State.RESTING, self._clock() + event.rest_s
                view.why = _REST_WHY[event.reason]
            case ClearStarted():
                view.state, view.attempt = _State.SENDING, event.attempt
            case ClearRetrying(answer=answer):
                view.state, view.attempt = _State.RETRYING, event.attempt
                view.retry_at = self._clock() + event.delay_s
                view.why = (
                    f"HTTP {answer.http_status}" if answer.http_status else (answer.error or "")
                )

    def _on_finished(self, event: ClearFinished) -> None:
        outcome = tally_of(event)  # done by an earlier attempt is no skip
        self._counts[outcome] = self._counts.get(outcome, 0) + 1
        reason = event.reason.value if event.reason is not None else None
        if event.attempts > 0:
            # Only clears that were sent say how long a clear takes; skips take no time.
            self._timed += 1
            self._timed_s += event.duration_ms / 1000
        elif reason in _HALT_REASONS and self._halting is None:
            self._halting = reason
        view = self._lane_of.get(event.clear.seq)
        if view is None:
            return
        if self._estimates.known(event.clear):
            view.known_left_s -= self._estimates.of(event.clear)
        else:
            view.unknown_left -= 1
        view.clear = event.clear
        view.done += 1
        view.last = outcome if reason is None else f"{outcome} ({reason})"
        view.state = _State.DONE if view.done >= view.total else _State.BETWEEN
        row = view.rows.get(event.token_id)
        if row is not None:
            row.clear, row.last, row.state = event.clear, view.last, _State.BETWEEN
            row.done = view.done

    # Drawing: runs on rich's refresh thread; reads the counters, never changes them.

    def _compose(self, now: float) -> RenderableType:
        done = sum(self._counts.values())
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(self._total, 1), completed=done, width=30, complete_style="cyan"),
            Text(f"{done}/{self._total} clears", style="bold"),
            self._counts_text(),
        )
        parts: list[RenderableType] = [head, self._times_text(now)]
        running = [
            row
            for view in self._lanes
            if view.state not in (_State.QUEUED, _State.DONE)
            for row in (view.rows.values() if view.rows else (view,))
            if row.state is not _State.QUEUED
        ]
        if running:
            parts.append(self._lanes_table(running[:MAX_ROWS], now))
        if len(running) > MAX_ROWS:
            parts.append(Text(f"… and {len(running) - MAX_ROWS} more lanes running", style="dim"))
        if self._fault is not None:
            parts.append(Text(f"progress display stopped: {self._fault}", style="red"))
        return Group(*parts)

    def _counts_text(self) -> Text:
        counts = self._counts
        # Clears done before a resume are shown only where there are some.
        already = counts.get("already_succeeded", 0)
        return Text.assemble(
            (f"{counts['succeeded']} succeeded", "green"),
            ", ",
            (f"{already} already succeeded, " if already else "", "green"),
            (f"{counts['failed']} failed", "red" if counts["failed"] else ""),
            ", ",
            (f"{counts['skipped']} skipped", "yellow" if counts["skipped"] else ""),
        )

    def _times_text(self, now: float) -> Text:
        left = self.estimate_left(now)
        queued = sum(1 for view in self._lanes if view.state is _State.QUEUED)
        finished = sum(1 for view in self._lanes if view.state is _State.DONE)
        running = len(self._lanes) - queued - finished
        history = ""
        if left is not None and self._estimates.runs:
            history = f", from the last {self._estimates.runs} runs"
        text = Text.assemble(
            f"elapsed {_duration(now - self._started_at)}",
            " · left ",
            ("—" if left is None else f"~{_duration(left)}", "bold"),
            history,
            f" · lanes: {running} running, {queued} queued, {finished} done",
        )
        if self._halting is not None:
            text.append(f" · stopping ({self._halting}): calls in flight finish", style="yellow")
        return text

    def _lanes_table(self, views: Sequence[_LaneView], now: float) -> RenderableType:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
        table.add_column("token")
        table.add_column("lane", justify="right")
        table.add_column("campaign")
        table.add_column("state")
        for view in views:
            current = min(view.done + 1, view.total) if view.state in _WORKING else view.done
            table.add_row(
                view.label,
                f"{current}/{view.total}",
                _campaign(view.clear) if view.clear is not None else "",
                self._state_text(view, now),
            )
        return table

    def _state_text(self, view: _LaneView, now: float) -> str:
        of = f" of {view.clear.retries + 1}" if view.clear is not None else ""
        waited = f", waited {view.waited_s:.1f} s for the token" if view.waited_s else ""
        if view.state is _State.RESTING:
            # Counted down to the second, as the operator reads a clock: 0:42, 0:41...
            left = _duration(math.ceil(max(0.0, view.rest_until - now)))
            return f"resting {left} ({view.why})"
        if view.state is _State.WAITING:
            return f"waiting for token ({view.waited_s or 0:.1f} s)"
        if view.state is _State.SENDING:
            attempt = f", attempt {view.attempt}{of}" if view.attempt > 1 else ""
            return f"sending{attempt}{waited}"
        if view.state is _State.RETRYING:
            seconds = math.ceil(max(0.0, view.retry_at - now))
            why = f" ({view.why[:_MAX_WHY_CHARS]})" if view.why else ""
            return f"attempt {view.attempt}{of} failed{why}, retrying in {seconds}s"
        return f"between clears, last {view.last}"

    def estimate_left(self, now: float | None = None) -> float | None:
        """Seconds until every clear has ended, or ``None`` while there is nothing to go on.

        Each lane's remaining clears take their expected duration from the journal (the
        median of their last successful ones), or else the mean duration of the clears sent
        so far, less what its current clear already took. The run lasts as long as the
        longest lane (its clears run one at a time; a pool's spread over its tokens), and no
        less than the whole remaining work spread over the tokens that may run at once.
        """
        if self._halting is not None:
            return None
        if sum(self._counts.values()) >= self._total:
            return 0.0
        if self._timed == 0 and not self._estimates.runs:
            return None
        at = self._clock() if now is None else now
        mean = self._timed_s / self._timed if self._timed else DEFAULT_CLEAR_S
        longest = total = 0.0
        for view in self._lanes:
            work = view.known_left_s + view.unknown_left * mean
            if view.state in _WORKING and view.clear is not None:
                current = self._estimates.of(view.clear)
                current = current if self._estimates.known(view.clear) else mean
                work -= min(at - view.began_at, current)
            work = max(work, 0.0)
            longest = max(longest, work / view.tokens)
            total += work
        return max(longest, total / self._parallel)


def _campaign(clear: Clear) -> str:
    return (
        f"#{clear.seq} {clear.server}/{clear.type_campaign}/{clear.campaign_id}/"
        f"{clear.result_label}"
    )


def _duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
