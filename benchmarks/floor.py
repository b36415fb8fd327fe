"""The floor: the bare loop plus the work the issues require of every clear, written plainly.

Run by ``benchmarks/bench.py --floor`` as its own process, beside ``orchestrator
run`` and the bare loop, against the same simulator and the same calls::

    python benchmarks/floor.py JOB.json STATE_DIR

It is :mod:`bare` (its :func:`~bare.run_lanes`: one session, one task per token,
calls in order; answers judged by its :func:`~bare.judge`) with, for every clear,
what orchestrator must do by the issues and nothing else, each in the plainest way
this stack allows:

* the token's lock: an exclusive ``flock`` on ``STATE_DIR/locks/<token_id>.lock``
  around each call, the file opened when the lane starts and closed when it ends;
* the journal: a SQLite database in WAL mode with a ``pending`` row per clear,
  written before the first request; the ``in_flight`` mark appended to a tail
  file (one ``write``, with the previous clear's end) before each request; one
  ``UPDATE`` per clear in one transaction per turn of the event loop;
* the log: a ``clear.started`` and a ``clear.succeeded`` (or ``clear.failed``)
  JSON line per clear with orchestrator's fields, written once per turn.

No plan file, validation, retries, cooldowns, report, signals or resume: those
are orchestrator's structure, and what it costs above this floor is theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import sys
import time
from json.encoder import encode_basestring_ascii as quoted
from pathlib import Path
from typing import Any

import aiohttp
from bare import TOKEN_HEADER, allow_open_files, judge, run_lanes
from yarl import URL

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL,"
    " finished_at TEXT, exit_code INTEGER)",
    "CREATE TABLE IF NOT EXISTS clears (run_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " token_id TEXT NOT NULL, server TEXT NOT NULL, type_campaign TEXT NOT NULL,"
    " campaign_id TEXT NOT NULL, result TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',"
    " attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER, code INTEGER, msg TEXT,"
    " error TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, seq))",
)
_INSERT = (
    "INSERT INTO clears (run_id, seq, token_id, server, type_campaign, campaign_id, result,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_END = (
    "UPDATE clears SET state = ?, attempts = 1, http_status = ?, code = ?, msg = ?,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)


class _Clock:
    """ISO 8601 UTC stamps; the formatted second is kept, only the fraction is new."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((now - second) * 1e6):06d}Z"


class _Sinks:
    """The tail, SQLite and stdout: the tail before each request, the rest once per turn."""

    def __init__(self, conn: sqlite3.Connection, tail: int, run_id: str) -> None:
        self.conn, self.tail, self.run_id = conn, tail, run_id
        self.clock = _Clock()
        self.lines: list[str] = []
        self.unwritten: list[str] = []
        self.ends: list[tuple[Any, ...]] = []
        self._soon = False

    def settle(self, line: str) -> None:
        """Append ``line`` and every end not yet in the tail, in one write."""
        self.unwritten.append(line)
        self._write_tail()

    def later(self, line: str, end: str | None = None, row: tuple[Any, ...] | None = None) -> None:
        """Keep a log line (and a clear's end) for the end of this turn."""
        self.lines.append(line)
        if end is not None and row is not None:
            self.unwritten.append(end)
            self.ends.append(row)
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.apply)

    def apply(self) -> None:
        """The turn's end: tail first, then SQLite in one transaction, then the log."""
        self._soon = False
        self._write_tail()
        if self.ends:
            rows, self.ends = self.ends, []
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(_END, rows)
            self.conn.execute("COMMIT")
        if self.lines:
            lines, self.lines = self.lines, []
            sys.stdout.write("".join(lines))
            sys.stdout.flush()

    def _write_tail(self) -> None:
        if self.unwritten:
            data, self.unwritten = "".join(self.unwritten).encode(), []
            while data:
                data = data[os.write(self.tail, data) :]


async def _hold(fd: int) -> None:
    """The token's lock, polled while another process has it."""
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


async def _lane(
    session: aiohttp.ClientSession, sinks: _Sinks, lane: dict[str, Any], job: dict[str, Any]
) -> bool:
    token = os.environ[lane["token_env"]]
    token_id = lane["token_id"]
    headers = {TOKEN_HEADER: token}
    head = f'"run_id": "{sinks.run_id}"'
    fd = os.open(job["locks"] + f"/{token_id}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        for url, (seq, campaign_id, result) in zip(lane["urls"], lane["clears"], strict=True):
            names = (
                f'"seq": {seq}, "token_id": "{token_id}", "server": "{job["server"]}", '
                f'"type_campaign": "{job["type_campaign"]}", "campaign_id": "{campaign_id}", '
                f'"result": "{result}"'
            )
            await _hold(fd)
            try:
                stamp = sinks.clock.stamp()
                sinks.settle(f'["started",[1,"{stamp}",{seq}]]\n')
                sinks.later(
                    f'{{"event": "clear.started", "timestamp": "{stamp}", "level": "info", '
                    f'{head}, {names}, "attempt": 1}}\n'
                )
                started = time.monotonic()
                async with session.delete(
                    URL(url, encoded=True), headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    body = await resp.read()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            ok, code, msg = judge(status, body)
            state, event, level = (
                ("succeeded", "clear.succeeded", "info")
                if ok
                else ("failed", "clear.failed", "error")
            )
            stamp = sinks.clock.stamp()
            msg_text = "null" if msg is None else quoted(msg)
            code_text = "null" if code is None else code
            sinks.later(
                f'{{"event": "{event}", "timestamp": "{stamp}", "level": "{level}", {head}, '
                f'{names}, "reason": null, "attempts": 1, "http_status": {status}, '
                f'"code": {code_text}, "msg": {msg_text}, "error": null, '
                f'"duration_ms": {round((time.monotonic() - started) * 1000)}}}\n',
                end=f'["done",[1,"{state}",{status},{code_text},{msg_text},"{stamp}",{seq}]]\n',
                row=(state, status, code, msg, stamp, sinks.run_id, seq),
            )
            if not ok:  # on_failure: stop
                return False
        return True
    finally:
        os.close(fd)


def _pending_rows(run_id: str, job: dict[str, Any], now: str) -> list[tuple[Any, ...]]:
    """Every lane's first clear, then every lane's second...: the order they end in."""
    placed = sorted(
        (position, order, lane["token_id"], clear)
        for order, lane in enumerate(job["lanes"])
        for position, clear in enumerate(lane["clears"])
    )
    return [
        (run_id, seq, token_id, job["server"], job["type_campaign"], campaign_id, result, now)
        for _, _, token_id, (seq, campaign_id, result) in placed
    ]


def _open_journal(
    state_dir: Path, run_id: str, job: dict[str, Any], now: str
) -> sqlite3.Connection:
    conn = sqlite3.connect(state_dir / "journal.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO runs (run_id, started_at) VALUES (?, ?)", (run_id, now))
    conn.executemany(_INSERT, _pending_rows(run_id, job, now))
    conn.execute("COMMIT")
    return conn


async def main(job: dict[str, Any], state_dir: Path) -> int:
    (state_dir / "locks").mkdir(parents=True, exist_ok=True)
    (state_dir / "runs").mkdir(exist_ok=True)
    job["locks"] = str(state_dir / "locks")
    for lane in job["lanes"]:
        token = os.environ[lane["token_env"]]
        lane["token_id"] = hashlib.sha256(token.encode()).hexdigest()[:12]
    clock = _Clock()
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
    conn = _open_journal(state_dir, run_id, job, clock.stamp())
    tail_path = state_dir / "runs" / f"{run_id}.tail"
    tail = os.open(tail_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC)
    sinks = _Sinks(conn, tail, run_id)

    async def run_lane(session: aiohttp.ClientSession, lane: dict[str, Any]) -> bool:
        return await _lane(session, sinks, lane, job)

    exit_code = await run_lanes(job["lanes"], int(job["max_parallel"]), run_lane)
    sinks.apply()
    conn.execute(
        "UPDATE runs SET finished_at = ?, exit_code = ? WHERE run_id = ?",
        (clock.stamp(), exit_code, run_id),
    )
    conn.close()
    os.close(tail)
    with contextlib.suppress(FileNotFoundError):
        tail_path.unlink()
    return exit_code


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1].startswith("-"):
        print("usage: floor.py JOB.json STATE_DIR", file=sys.stderr)
        sys.exit(2)
    allow_open_files()
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.exit(asyncio.run(main(json.load(handle), Path(sys.argv[2]))))
