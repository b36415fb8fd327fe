"""Where a run's events go: the recorder (the journal) first and durably, then the listeners.

A clear's start is settled before its request leaves, and its end before the
listeners (the log, the report, the display) hear of it, so the log never claims
an outcome the journal lacks without saying so. The first error a recorder or a
listener raises is kept and halts the run: a clear whose state cannot be recorded
must not be followed by another request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from orchestrator.run.events import ClearFinished, ClearStarted, Event, Listener, Recorder
from orchestrator.run.lanes import reason_of


class EventSink:
    """Sends each event to the recorder, then the listeners; calls ``halt`` on a failure."""

    def __init__(
        self, recorder: Recorder | None, listeners: Iterable[Listener], halt: Callable[[], None]
    ) -> None:
        self._recorder = recorder
        self._listeners = tuple(listeners)
        self._halt = halt
        #: The first error a recorder or listener raised; the run halted on it.
        self.error: Exception | None = None

    async def end(self, finished: ClearFinished) -> ClearFinished:
        """Record how a clear ended, durably, and only then tell the listeners (the log).

        When the outcome cannot be recorded, the event says why (``unrecorded``) and
        the run halts.
        """
        if (exc := await self._settled(finished)) is not None:
            finished = dataclasses.replace(finished, unrecorded=reason_of(exc))
        self.emit(finished, recorded=True)
        return finished

    async def record_start(self, started: ClearStarted) -> bool:
        """Record the attempt durably before its request leaves; False when it cannot be."""
        return await self._settled(started) is None

    def emit(self, event: Event, *, recorded: bool = False) -> None:
        """Tell the recorder (unless it has it already) and every listener of ``event``."""
        if self._recorder is not None and not recorded:
            try:
                self._recorder(event)
            except Exception as exc:
                self._failed(exc)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:
                self._failed(exc)

    async def _settled(self, event: Event) -> Exception | None:
        """Record ``event`` durably; the error when that failed (the run then halts)."""
        if self._recorder is None:
            return None
        try:
            self._recorder(event)
            await self._recorder.settle()
        except Exception as exc:
            self._failed(exc)
            return exc
        return None

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._halt()
