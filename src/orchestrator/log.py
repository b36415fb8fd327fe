"""The structured log: one line per thing that happened, JSON or console.

Event names are stable and namespaced (``clear.succeeded``); fields are flat.
Every line carries ``event``, ``timestamp`` (ISO 8601, UTC), ``level`` and
``run_id``. The log never sees a token: only ``token_id``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast


def _import_structlog() -> None:
    # structlog imports rich, when installed, only for pretty tracebacks, which the log
    # never prints; rich costs ~0.1 s of start-up, and start-up counts. Keep it out of
    # structlog's import; the progress display imports it later if it needs it.
    blocked = "rich" not in sys.modules
    if blocked:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        if blocked and sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]


_import_structlog()

import structlog  # noqa: E402

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

from .events import (  # noqa: E402
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    TokenWaiting,
    clear_fields,
    outcome_fields,
)
from .jsontext import json_value  # noqa: E402
from .stamps import iso_utc  # noqa: E402

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
    return "console" if stream.isatty() else "json"


def make_logger(
    fmt: LogFormat,
    run_id: str,
    stream: TextIO | None = None,
    *,
    extra_processors: tuple[Processor, ...] = (),
) -> Any:
    """A logger bound to ``run_id`` that writes one line per event to ``stream``."""
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
    """A scheduler listener that writes each event as one JSON line, without structlog.

    The lines are exactly those :class:`EventLog` writes through a JSON
    :func:`make_logger` (same keys, order and rendering), at a fraction of the cost:
    the fields that name a clear are rendered once per clear, and the lines of one
    turn of the event loop reach the stream in one write and one flush, at the end
    of the turn, rather than one each (with ``PYTHONUNBUFFERED``, as containers often
    set, every write is a system call). The run's other lines go through
    :meth:`ordered_stream`, which writes the pending lines first, so the order holds.
    A write or flush that fails makes the next call raise, which halts the run.
    """

    def __init__(self, stream: TextIO, run_id: str) -> None:
        """Write to ``stream``; every line carries ``run_id``."""
        self._stream = stream
        self._run_id = json.dumps(run_id)
        self._names: dict[tuple[int, str], str] = {}
        self._pending: list[str] = []
        self._error: Exception | None = None

    def __call__(self, event: Event) -> None:
        """Write ``event``'s line (by the end of this turn of the event loop)."""
        if self._error is not None:
            raise self._error
        self._pending.append(self._line(event, *_describe(event)))
        if isinstance(event, ClearFinished):
            # The clear's last line: its rendered names are not needed again (memory).
            self._names.pop((event.clear.seq, event.token_id), None)
        if len(self._pending) == 1:
            self._flush_soon()

    def ordered_stream(self) -> TextIO:
        """A stream for the run's other lines that keeps them in order with this log's."""
        # Loggers only write and flush it.
        return cast(TextIO, _AfterPending(self))

    def flush(self) -> None:
        """Write the pending lines now and flush the stream; keep a failure for the next call."""
        try:
            self._write_pending()
            self._stream.flush()
        except Exception as exc:  # e.g. a closed pipe: the next event halts the run
            self._error = exc

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self._stream.write("".join(lines))

    def _write_in_order(self, text: str) -> int:
        self._write_pending()
        return self._stream.write(text)

    def _flush_stream(self) -> None:
        self._stream.flush()

    def _line(self, event: Event, name: str, level: str, details: Mapping[str, object]) -> str:
        key = (event.clear.seq, event.token_id)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = _fields(clear_fields(event.clear, event.token_id))
        return (
            f'{{"event": "{name}", "timestamp": "{iso_utc(time.time(), 6)}", "level": "{level}", '
            f'"run_id": {self._run_id}, {names}, {_fields(details)}}}\n'
        )

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.call_soon(self.flush)


class _AfterPending(io.TextIOBase):
    """Writes to a :class:`JsonEventLog`'s stream after the log's pending lines."""

    def __init__(self, log: JsonEventLog) -> None:
        super().__init__()
        self._log = log

    def write(self, text: str) -> int:
        return self._log._write_in_order(text)

    def flush(self) -> None:
        self._log._flush_stream()


def _fields(fields: Mapping[str, object]) -> str:
    """``"key": value`` pairs as ``json.dumps`` renders them inside an object."""
    return ", ".join([f'"{key}": {json_value(value)}' for key, value in fields.items()])
