"""A real, throwaway redis-server for tests.

``redis_url`` (session-scoped) yields ``redis://127.0.0.1:<port>/0`` of a server
started on a free loopback port with persistence off, and stops it afterwards.
Tests that need a server they can stop themselves use :func:`start_redis_server`.
Where no ``redis-server`` binary is installed, the tests using them are skipped
with the reason shown.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: How long a fresh server may take to answer PING.
_START_TIMEOUT_S = 5.0


class RedisServer:
    """One running redis-server process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def restart_empty(self) -> None:
        """Stop the server and start a new one on the same port, without the old data.

        What a Redis without persistence does when it is restarted: every key is gone.
        """
        self.stop()
        fresh = _launch(redis_server_binary(), self.log.parent, self.port)
        if not _wait_until_ready(fresh):
            fresh.stop()
            raise RuntimeError(f"redis-server did not come back on port {self.port}")
        self.process = fresh.process

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server_binary() -> str:
    """The path of ``redis-server``; skip the calling test when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed: apt-get install redis-server to run these tests")
    return binary


def start_redis_server(workdir: Path) -> RedisServer:
    """Start a redis-server in ``workdir`` and return once it answers PING."""
    binary = redis_server_binary()
    # Another process may take the free port between our probe and redis binding it.
    for _ in range(3):
        server = _launch(binary, workdir, _free_port())
        if _wait_until_ready(server):
            return server
        server.stop()
    log = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT_S}s:\n{log}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server shared by the session's tests (use distinct keys)."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


def _launch(binary: str, workdir: Path, port: int) -> RedisServer:
    log = workdir / f"redis-{port}.log"
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL)
    return RedisServer(process, port, log)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_ready(server: RedisServer) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if _answers_ping(server.port):
            return True
        time.sleep(0.02)
    return False


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False
