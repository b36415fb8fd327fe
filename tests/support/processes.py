"""The real ``orchestrator`` CLI in subprocesses against a simulator in its own
process (``orchestrator simulate``): what the end-to-end tests drive and read.

Waits are bounded and wait on a condition (a log line, the simulator's stats),
never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from redis_server import redis_url  # noqa: F401

from orchestrator.cli import main
from orchestrator.plan.model import token_fingerprint

Json = dict[str, Any]

#: Longest a child process may take to do what a test waits for.
WAIT_S = 20.0

#: Six result filters: one lane of six clears per token.
SIX = "[no-answer, answer-machine, abandon, busy, congestion, unknown]"


# ----------------------------------------------------------------- simulators


@dataclass
class SimProcess:
    """``orchestrator simulate`` in its own process, on a port it picked itself."""

    proc: subprocess.Popen[bytes]
    root: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return self.root + "/wv{server}"

    def stats(self) -> Json:
        with urllib.request.urlopen(self.root + "/_simulator/stats", timeout=5) as answer:
            document: Json = json.load(answer)
        return document

    def reset(self) -> None:
        request = urllib.request.Request(self.root + "/_simulator/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def wait_idle(self) -> Json:
        """Stats once no call is being served (calls of a killed client end on their own)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            stats = self.stats()
            if all(call["status"] != 0 for call in stats["timeline"]):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the simulator still serves calls: {stats['timeline']}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def launch_simulator(
    workdir: Path, latency_ms: float, fail_rate: float
) -> Callable[[], SimProcess]:
    """Start ``orchestrator simulate``; the returned function waits until it answers."""
    log = workdir / f"simulator-{latency_ms}-{fail_rate}.err"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "simulate",
                "--host",
                "127.0.0.1",
                "--port",
                "0",  # the simulator binds a free port and prints it: no race for it
                "--latency-ms",
                str(latency_ms),
                "--fail-rate",
                str(fail_rate),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def ready() -> SimProcess:
        deadline = time.monotonic() + WAIT_S
        prefix = "simulating wolkvox at "
        while True:
            text = log.read_text(errors="replace")
            if prefix in text:
                url = text.split(prefix, 1)[1].splitlines()[0].strip()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                raise AssertionError(f"the simulator did not start: {text}")
            time.sleep(0.02)
        sim = SimProcess(proc, url.removesuffix("/wv{server}"))
        while True:  # it listens before it prints, so this normally answers at once
            try:
                sim.stats()
                return sim
            except OSError:
                if time.monotonic() > deadline:
                    sim.stop()
                    raise
                time.sleep(0.02)

    return ready


#: The configurations the tests use (latency_ms, fail_rate), started side by side.
SIMULATORS = ((5, 0.0), (150, 0.0), (50, 0.0), (1, 1.0), (300, 0.0))


# -------------------------------------------------------------- the CLI itself


@dataclass
class Cli:
    """Runs ``python -m orchestrator`` in ``cwd`` with test tokens; kills leftovers."""

    cwd: Path
    env: dict[str, str]
    children: list[subprocess.Popen[Any]] = field(default_factory=list)

    def run(self, *args: object, timeout: float = WAIT_S, **popen: Any) -> Done:
        popen.setdefault("stdin", subprocess.DEVNULL)
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **popen,
        )
        return Done(done.returncode, done.stdout, done.stderr)

    def call(self, *args: object) -> Done:
        """``orchestrator ARGS`` in this process, with this environment and directory.

        For a command whose own process is not what a test is about: an interpreter's
        start-up costs more than most commands. Its stdin is empty, as with :meth:`run`.
        """
        out, err = io.StringIO(), io.StringIO()
        environ, cwd = dict(os.environ), os.getcwd()
        sigterm = signal.getsignal(signal.SIGTERM)  # main() takes SIGTERM over
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        try:
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                _stdin(io.StringIO()),
            ):
                code = main([str(arg) for arg in args])
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(environ)
        return Done(code, out.getvalue(), err.getvalue())

    def run_all(self, *commands: tuple[object, ...], timeout: float = WAIT_S) -> list[Done]:
        """Independent commands side by side (start-up dominates short commands)."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        self.children.extend(procs)
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
        return [Done(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]

    def start(self, *args: object, name: str) -> Child:
        err = self.cwd / f"{name}.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
            )
        self.children.append(proc)
        return Child(proc, err)

    def show(self, run_id: str, state: Path) -> Json:
        done = self.call("show", run_id, "--json", "--state-dir", state)
        assert done.code == 0, done.err
        document: Json = json.loads(done.out)
        return document


@contextlib.contextmanager
def _stdin(stream: io.StringIO) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[Json]:
        return [json.loads(line) for line in self.out.splitlines()]


class Child:
    """A running CLI process whose JSON log lines are read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], err: Path) -> None:
        self.proc = proc
        self.err_path = err
        self.lines: list[Json] = []
        self._buffer = b""
        self._eof = False
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def next_line(self, deadline: float) -> Json | None:
        """The next log line, or None at the end of output; fails at ``deadline``."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line in time; so far {self.lines}\n{self.err}")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536) if not self._eof else b""
            if not chunk:
                self._eof = True
                if self._buffer:
                    raise AssertionError(f"a cut log line: {self._buffer!r}")
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line: Json = json.loads(raw)
        self.lines.append(line)
        return line

    def ready_lines(self) -> list[Json]:
        """The log lines that arrived by now, without waiting."""
        found: list[Json] = []
        while not self._eof and select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 65536)
            self._eof = not chunk
            self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            found.append(json.loads(raw))
        self.lines.extend(found)
        return found

    def finish(self, timeout: float = WAIT_S) -> int:
        """Read to the end of output and return the exit code."""
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))


def ids(tokens: dict[str, str]) -> dict[str, str]:
    """token_id of each token variable."""
    return {name: token_fingerprint(value) for name, value in tokens.items()}


def write_plan(
    path: Path,
    base_url: str,
    campaigns: list[str],
    *,
    cooldown_s: float = 0,
    settings: str = "",
) -> Path:
    text = "\n".join(
        [
            "version: 1",
            "settings:",
            f'  base_url: "{base_url}"',
            f"  cooldown_s: {cooldown_s}",
            *([f"  {settings}"] if settings else []),
            "defaults:",
            "  server: 0014",
            "  token_env: T_A",
            "  type_campaign: predictive",
            "campaigns:",
            *(f"  - {{{c}}}" for c in campaigns),
            "",
        ]
    )
    path.write_text(text)
    return path


def events(lines: list[Json], name: str) -> list[Json]:
    return [line for line in lines if line["event"] == name]


def assert_rested_before_first_use(
    lines: list[Json], timeline: list[Json], token_ids: set[str], cooldown_s: float
) -> None:
    """A resumed run rested exactly ``token_ids``, each for ``cooldown_s``, before its first call.

    Exact, whatever start-up takes: the ``token.resting`` line comes before the token's
    first ``clear.started``, and that call reached the simulator no earlier than the
    rest's ``until`` (both wall-clock times of this one machine).
    """
    # (A call of the resumed run that times out rests too, as outcome_unknown.)
    rests = [r for r in events(lines, "token.resting") if r["reason"] == "in_flight_at_resume"]
    assert sorted(rest["token_id"] for rest in rests) == sorted(token_ids), rests
    for rest in rests:
        token_id = rest["token_id"]
        assert rest["rest_s"] == cooldown_s, rest
        first_start = next(
            line
            for line in lines
            if line["event"] == "clear.started" and line["token_id"] == token_id
        )
        assert lines.index(rest) < lines.index(first_start)
        until = datetime.fromisoformat(rest["until"]).timestamp()
        first_call = min(c["arrived_wall"] for c in timeline if c["token_id"] == token_id)
        assert first_call >= until, (token_id, until - first_call)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def calls_of(timeline: list[Json]) -> Counter[tuple[str, str | None]]:
    return Counter((call["campaign_id"], call["result"]) for call in timeline)
