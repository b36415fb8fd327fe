"""The structured log: one line per thing that happened, JSON or console.

Event names are stable and namespaced (``clear.succeeded``); fields are flat.
Every line carries ``event``, ``timestamp`` (ISO 8601, UTC), ``level`` and
``run_id``. The log never sees a token: only ``token_id``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping, MutableMapping
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

    from orchestrator.plan.model import Clear

from orchestrator.output.jsontext import json_value
from orchestrator.output.stamps import iso_utc
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    TokenWaiting,
    answer_values,
    clear_fields,
    outcome_fields,
)

LogFormat = Literal["json", "console"]

_FINISHED_EVENT = {
    Outcome.SUCCEEDED: ("clear.succeeded", "info"),
    Outcome.FAILED: ("clear.failed", "error"),
    Outcome.SKIPPED: ("clear.skipped", "warning"),
}


def _import_structlog() -> Any:
    # Imported only by make_logger: JSON runs write every line themselves
    # (JsonEventLog) and do not pay for structlog's import at start-up.
    # structlog imports rich, when installed, only for pretty tracebacks, which the log
    # never prints; rich costs ~0.1 s of start-up, and start-up counts. Keep it out of
    # structlog's import; the progress display imports it later if it needs it.
    blocked = "rich" not in sys.modules
    if blocked:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        if blocked and sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]
    return structlog


def pick_format(requested: str, stream: TextIO) -> LogFormat:
    """``auto`` means console on a terminal, JSON anywhere else."""
    if requested == "json":
        return "json"
    if requested == "console":
        return "console"
    return "console" if stream.isatty() else "json"


def make_logger(
    fmt: LogFormat,
    run_id: str,
    stream: TextIO | None = None,
    *,
    extra_processors: tuple[Processor, ...] = (),
) -> Any:
    """A structlog logger bound to ``run_id`` that writes one line per event to ``stream``."""
    structlog = _import_structlog()
    out = stream if stream is not None else sys.stdout
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _standard_order,
        *extra_processors,
        renderer,
    ]
    return structlog.wrap_logger(
        structlog.WriteLogger(out),
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
        return "clear.retrying", "warning", details
    name, level = _FINISHED_EVENT[event.outcome]
    outcome = outcome_fields(event)
    del outcome["outcome"]
    return name, level, outcome


class EventLog:
    """A scheduler listener that writes each event as one log line."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def __call__(self, event: Event) -> None:
        """Log ``event``."""
        name, level, details = _describe(event)
        getattr(self._logger, level)(name, **clear_fields(event.clear, event.token_id), **details)


class JsonEventLog:
    """The JSON log of a run, without structlog: a scheduler listener and the run's logger.

    Its lines are exactly those a JSON :func:`make_logger` writes (same keys, order
    and rendering; a test holds the two to it), at a fraction of the cost and
    start-up: the fields that name a clear are rendered once per clear, and the
    lines of one turn of the event loop reach the stream in one write and one
    flush, at the end of the turn, rather than one each (with ``PYTHONUNBUFFERED``,
    as containers often set, every write is a system call). The run's own lines
    (``run.started`` ...) come through :meth:`info`, :meth:`warning` and
    :meth:`error`, into the same buffer, so the order holds. A write or flush that
    fails makes the next clear event raise, which halts the run.
    """

    def __init__(self, stream: TextIO, run_id: str) -> None:
        """Write to ``stream``; every line carries ``run_id``."""
        self._stream = stream
        self._head_end = f'"run_id": {json.dumps(run_id)}'
        self._names: dict[tuple[int, str], str] = {}
        self._pending: list[str] = []
        self._error: Exception | None = None

    def __call__(self, event: Event) -> None:
        """Write ``event``'s line (by the end of this turn of the event loop)."""
        if self._error is not None:
            raise self._error
        # The two events of every clear are rendered straight to text; the rest as
        # _describe says. The byte-for-byte test holds all of them to structlog's lines.
        if type(event) is ClearStarted:
            self._add(self._line(event, "clear.started", "info", f'"attempt": {event.attempt}'))
        elif type(event) is ClearFinished:
            name, level = _FINISHED_EVENT[event.outcome]
            self._add(self._line(event, name, level, _outcome_text(event)))
            # The clear's last line: its rendered names are not needed again (memory).
            self._names.pop((event.clear.seq, event.token_id), None)
        else:
            name, level, details = _describe(event)
            self._add(self._line(event, name, level, _fields(details)))

    def info(self, event: str, **fields: object) -> None:
        """Write a line of level ``info`` named ``event``, as a structlog logger would."""
        self._add(self._run_line(event, "info", fields))

    def warning(self, event: str, **fields: object) -> None:
        """Write a line of level ``warning`` named ``event``, as a structlog logger would."""
        self._add(self._run_line(event, "warning", fields))

    def error(self, event: str, **fields: object) -> None:
        """Write a line of level ``error`` named ``event``, as a structlog logger would."""
        self._add(self._run_line(event, "error", fields))

    def flush(self) -> None:
        """Write the pending lines now and flush the stream; keep a failure for the next event."""
        lines, self._pending = self._pending, []
        try:
            if lines:
                self._stream.write("".join(lines))
            self._stream.flush()
        except Exception as exc:  # e.g. a closed pipe: the next event halts the run
            self._error = exc

    def _add(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) > 1:
            return  # the first line of the turn asked for the flush
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def _head(self, name: str, level: str) -> str:
        stamp = iso_utc(time.time(), 6)
        return f'{{"event": "{name}", "timestamp": "{stamp}", "level": "{level}", {self._head_end}'

    def _line(self, event: Event, name: str, level: str, details: str) -> str:
        key = (event.clear.seq, event.token_id)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = _names_text(event.clear, event.token_id)
        return f"{self._head(name, level)}, {names}, {details}}}\n"

    def _run_line(self, name: str, level: str, fields: Mapping[str, object]) -> str:
        rest = f", {_fields(fields)}" if fields else ""
        return f"{self._head(name, level)}{rest}}}\n"


def _names_text(clear: Clear, token_id: str) -> str:
    """``clear_fields(clear, token_id)`` rendered as :func:`_fields` would, by hand."""
    return (
        f'"seq": {clear.seq}, "token_id": {encode_basestring_ascii(token_id)}, '
        f'"server": {encode_basestring_ascii(clear.server)}, '
        f'"type_campaign": {encode_basestring_ascii(clear.type_campaign)}, '
        f'"campaign_id": {encode_basestring_ascii(clear.campaign_id)}, '
        f'"result": {encode_basestring_ascii(clear.result_label)}'
    )


def _outcome_text(event: ClearFinished) -> str:
    """``outcome_fields(event)`` but ``outcome``, rendered as :func:`_fields` would."""
    status, code, msg, error = answer_values(event)
    reason = "null" if event.reason is None else f'"{event.reason.value}"'
    text = (
        f'"reason": {reason}, "attempts": {event.attempts}, '
        f'"http_status": {"null" if status is None else status}, '
        f'"code": {"null" if code is None else code}, '
        f'"msg": {"null" if msg is None else encode_basestring_ascii(msg)}, '
        f'"error": {"null" if error is None else encode_basestring_ascii(error)}, '
        f'"duration_ms": {event.duration_ms}'
    )
    if event.blocked_by is not None:
        text += f', "blocked_by": {event.blocked_by}'
    return text


def _fields(fields: Mapping[str, object]) -> str:
    """``"key": value`` pairs as ``json.dumps`` renders them inside an object."""
    return ", ".join([f'"{key}": {json_value(value)}' for key, value in fields.items()])
