"""Fixtures of the end-to-end tests: simulators in their own processes, the CLI, tokens."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import (
    SIMULATORS,
    Cli,
    SimProcess,
    launch_simulator,
)
from redis_server import redis_url  # noqa: F401


@pytest.fixture(scope="session")
def simulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    """``simulators(latency_ms=.., fail_rate=..)``: a reset simulator of that configuration.

    One process per configuration for the whole session (each costs an interpreter's
    start-up): every test gets it reset, and uses tokens of its own.
    """
    workdir = tmp_path_factory.mktemp("simulators")
    running: dict[tuple[float, float], SimProcess] = {}
    starting = {key: launch_simulator(workdir, *key) for key in SIMULATORS}

    def get(latency_ms: float = 5, fail_rate: float = 0.0) -> SimProcess:
        key = (latency_ms, fail_rate)
        if key not in running:
            ready = starting.pop(key, None) or launch_simulator(workdir, *key)
            running[key] = ready()
        sim = running[key]
        sim.reset()
        return sim

    try:
        yield get
    finally:
        for sim in running.values():
            sim.stop()
        for ready in starting.values():  # never used: still wait for it, then stop it
            with contextlib.suppress(AssertionError, OSError):
                ready().stop()


@pytest.fixture
def tokens() -> dict[str, str]:
    """Fresh token values per test: Redis keys and simulator counters never mix."""
    tag = uuid.uuid4().hex[:12]
    return {"T_A": f"tok-a-{tag}", "T_B": f"tok-b-{tag}"}


@pytest.fixture
def cli(tmp_path: Path, tokens: dict[str, str]) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOLKVOX_", "T_"))}
    # Whatever a command is not told with --state-dir stays inside the test's directory.
    env["ORCHESTRATOR_STATE_DIR"] = str(tmp_path / "default-state")
    env.update(tokens)
    runner = Cli(tmp_path, env)
    try:
        yield runner
    finally:
        for child in runner.children:
            if child.poll() is None:
                child.kill()
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
