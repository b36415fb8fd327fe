"""A simulator running on its own event loop in a background thread, for sync CLI tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.wolkvox.simulator import SERVER_PREFIX, Simulator, SimulatorConfig


class ThreadedSimulator:
    """Starts a :class:`Simulator` on 127.0.0.1 in a thread; ``base_url`` is its template."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.simulator = Simulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedSimulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        await self.simulator.stop()
        # Calls the simulator keeps serving after their client left (as wolkvox does) end here.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    @property
    def base_url(self) -> str:
        return self.simulator.url + SERVER_PREFIX


@contextmanager
def running_simulator(**config: object) -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(**config)) as sim:  # type: ignore[arg-type]
        yield sim
