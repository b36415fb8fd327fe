"""The structured log: one line per thing that happened, JSON or console, through structlog.

Event names are stable and namespaced (``clear.succeeded``); fields are flat.
Every JSON line carries ``event``, ``timestamp`` (ISO 8601, UTC), ``level`` and
``run_id``; the console renders the same event dicts for people
(:mod:`orchestrator.output.console`). The log never sees a token: a clear's
token is named by ``token_id`` (its fingerprint) and ``token`` (its reference,
``env:TOK_A``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from orchestrator.output.console import MAX_WIDTH, ConsoleLineRenderer, console_width
from orchestrator.output.streams import is_terminal
from orchestrator.plan.model import Lane, TokenPool
from orchestrator.run.events import (
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    RestReason,
    TokenLeftPool,
    TokenResting,
    TokenWaiting,
    clear_fields,
    outcome_fields,
)

LogFormat = Literal["json", "console"]

_FINISHED_EVENT = {
    Outcome.SUCCEEDED: ("clear.succeeded", "info"),
    Outcome.FAILED: ("clear.failed", "error"),
    Outcome.SKIPPED: ("clear.skipped", "warning"),
}


def pick_format(requested: str, stream: TextIO) -> LogFormat:
    """``auto`` means console on a terminal, JSON anywhere else."""
    if requested == "json":
        return "json"
    if requested == "console":
        return "console"
    return "console" if is_terminal(stream) else "json"


class LineWriter:
    """structlog's output: writes and flushes each rendered line as it comes.

    A write that fails (a reader that went away, as ``| head -1`` does; a full disk)
    cuts the log: that line and every later one are dropped, and ``on_cut`` hears the
    failure, once. Nothing is raised, so the run goes on: the journal, not the log, is
    its durable record, and the report says the log was cut.
    """

    def __init__(self, stream: TextIO, on_cut: Callable[[Exception], None] | None = None) -> None:
        """Write to ``stream``; tell ``on_cut`` when a write first fails."""
        self._stream = stream
        self._on_cut = on_cut
        #: The first write or flush that failed, if any.
        self.failure: Exception | None = None

    @property
    def cut(self) -> bool:
        """Whether a line could not be written, so this log lacks the lines from there on."""
        return self.failure is not None

    def msg(self, message: str) -> None:
        """Write ``message`` as one line and flush it, unless the log was cut."""
        if self.failure is not None:
            return
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except Exception as exc:
            self.failure = exc
            if self._on_cut is not None:
                self._on_cut(exc)

    def isatty(self) -> bool:
        """Whether the stream is a terminal (the console format colours only then)."""
        return is_terminal(self._stream)

    @property
    def encoding(self) -> str | None:
        """The stream's encoding; ``None`` for a text buffer, which takes any text."""
        return getattr(self._stream, "encoding", None)

    def columns(self) -> int | None:
        """The terminal's width when the stream is one, else ``None``."""
        if not self.isatty():
            return None
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            # A stream without a descriptor of its own (lines shown above the progress
            # display) is the terminal stdout is on.
            return shutil.get_terminal_size((0, 0)).columns or None

    debug = info = warning = error = critical = msg


def make_logger(
    fmt: LogFormat,
    run_id: str | None,
    stream: TextIO | LineWriter | None = None,
    *,
    extra_processors: tuple[Processor, ...] = (),
) -> Any:
    """A structlog logger bound to ``run_id`` that writes one line per event to ``stream``.

    ``stream`` defaults to ``sys.stdout``; ``extra_processors`` run just before the
    renderer (tests capture the event dicts there). The console format is coloured
    only on a terminal and without a non-empty ``NO_COLOR`` (no-color.org).
    """
    if stream is None:
        stream = sys.stdout
    lines = stream if isinstance(stream, LineWriter) else LineWriter(stream)
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    else:
        renderer = ConsoleLineRenderer(
            width=console_width(lines.columns()),
            encoding=lines.encoding,
            colors=lines.isatty() and not os.environ.get("NO_COLOR"),
        )
        # A person reads the time on the wall clock; the JSON log keeps UTC.
        stamper = structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        stamper,
        _standard_order,
        *extra_processors,
        renderer,
    ]
    return structlog.wrap_logger(
        lines,
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    ).bind(run_id=run_id)


def _standard_order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # The four fields every line has come first, so a person reading raw JSON sees them.
    ordered: MutableMapping[str, Any] = {
        "event": event_dict.pop("event"),
        "timestamp": event_dict.pop("timestamp"),
        "level": event_dict.pop("level"),
        "run_id": event_dict.pop("run_id", None),
    }
    ordered.update(event_dict)
    return ordered


def _describe(event: Event) -> tuple[str, str, dict[str, object]]:
    """An event's name, level and the fields that follow the clear's own, in line order."""
    if isinstance(event, TokenWaiting):
        return "token.waiting", "info", {"waited_s": round(event.waited_s, 3)}
    if isinstance(event, TokenLeftPool):
        left: dict[str, object] = {"pool": event.pool_id, "reason": event.reason.value}
        return "token.left_pool", "warning", left | {"tokens_left": event.tokens_left}
    if isinstance(event, TokenResting):
        return "token.resting", _RESTING_LEVEL[event.reason], _rest_fields(event)
    if isinstance(event, ClearStarted):
        return "clear.started", "info", {"attempt": event.attempt}
    if isinstance(event, ClearRetrying):
        answer = event.answer
        details: dict[str, object] = {
            "attempt": event.attempt,
            "delay_s": round(event.delay_s, 3),
            "error": answer.error,
            "http_status": answer.http_status,
            "code": answer.code,
        }
        if answer.retry_after_capped:
            # The server asked for a longer wait than the backoff's cap: say it was cut.
            details["retry_after_capped"] = True
        return "clear.retrying", "warning", details
    name, level = _FINISHED_EVENT[event.outcome]
    outcome = outcome_fields(event)
    del outcome["outcome"]
    return name, level, outcome


#: A resumed run's rest was planned; the others follow an answer the operator should see.
_RESTING_LEVEL = {
    RestReason.OUTCOME_UNKNOWN: "warning",
    RestReason.MAINTENANCE: "warning",
    RestReason.IN_FLIGHT_AT_RESUME: "info",
    RestReason.BUSY_ELSEWHERE: "warning",
}


def _rest_fields(event: TokenResting) -> dict[str, object]:
    answer = event.answer
    return {
        "reason": event.reason.value,
        "rest_s": round(event.rest_s, 3),
        # The same form as the line's own timestamp (ISO 8601, UTC), so the two compare.
        "until": event.until.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "http_status": answer.http_status if answer else None,
        "msg": answer.msg if answer else None,
        "error": answer.error if answer else None,
    }


class EventLog:
    """A scheduler listener that writes each event as one log line."""

    def __init__(self, logger: Any, *, pool_tokens: Mapping[str, str] | None = None) -> None:
        """Log through ``logger``.

        ``pool_tokens`` names each pool token by its reference, by ``token_id``: a pooled
        clear's line names the token that sent it, not the whole pool.
        """
        self._logger = logger
        self._pool_tokens = pool_tokens or {}

    def __call__(self, event: Event) -> None:
        """Log ``event``."""
        name, level, details = _describe(event)
        getattr(self._logger, level)(name, **_identity(event, self._pool_tokens), **details)


def pool_token_names(lanes: Sequence[Lane]) -> dict[str, str]:
    """Each pool token's references in the plan, by ``token_id``, for :class:`EventLog`."""
    return {token.token_id: ", ".join(token.token_names) for lane in lanes for token in lane.pool}


def console_line(event: Event, *, encoding: str | None = None, width: int = MAX_WIDTH) -> str:
    """``event`` as the console log shows it, without the time: for the ending's list."""
    name, level, details = _describe(event)
    renderer = ConsoleLineRenderer(width=width, encoding=encoding)
    return renderer(None, level, {"event": name, "level": level, **_identity(event), **details})


def _identity(event: Event, pool_tokens: Mapping[str, str] | None = None) -> dict[str, object]:
    """The clear's fields, with its token's reference beside its fingerprint."""
    fields: dict[str, object] = {}
    for key, value in clear_fields(event.clear, event.token_id).items():
        fields[key] = value
        if key == "token_id":
            # What people call the token (validate and --dry-run say the same); never its
            # value. A pool's clear names its pool until one of its tokens takes it.
            token, named = event.clear.token, pool_tokens or {}
            pooled = isinstance(token, TokenPool) and event.token_id in named
            fields["token"] = named[event.token_id] if pooled else str(token)
    return fields
