"""The run journal: every clear's state in SQLite, so a crashed run can be resumed.

A run is journaled in ``<state dir>/journal.sqlite3``: one ``runs`` row and one
``clears`` row per clear of the plan. The scheduler's events move a clear from
``pending`` to ``in_flight`` (durable *before* its request leaves) and on to
``succeeded``, ``failed`` or ``skipped``. A resumed run reopens the same run row,
so it keeps counting attempts where the crashed one stopped.

Each change is made durable before the run goes on by appending one line to the
run's *tail* (``<state dir>/runs/<run_id>.<nonce>.tail``): a clear's ``in_flight``
mark is in the tail before its request leaves. The changes of one turn of the event
loop then reach SQLite in one transaction, and the tail is removed once all of it
is there. A tail left by a process that died is replayed by the next
:meth:`Journal.open`; its lines set values rather than add to them, so replaying
what SQLite already has changes nothing (:class:`JournalRecorder`). On the
development VM a SQLite commit of one change costs about 20 µs of CPU, the append
about 2 µs (docs/performance.md).

Durability: an append, like a commit in WAL mode with ``synchronous=NORMAL``, is
in the OS page cache when it returns, so it survives a SIGKILL or crash of this
process and an orderly reboot; only an OS crash or power loss can lose the last
changes. An fsync per change was measured on the development VM to nearly double
the gap between an answer and the next request on a token (3.8 to 6.8 ms,
docs/performance.md), and losing a change to power loss costs at most a clear sent
again on resume or a token's cooldown skipped, never a clear silently left out.

Every ``sqlite3`` or OS failure surfaces as :class:`JournalError`, naming the
database path and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import JournalError
from orchestrator.output.jsontext import json_value
from orchestrator.output.stamps import iso_utc
from orchestrator.plan.model import Clear, Lane
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    TokenWaiting,
    answer_values,
)

#: The file inside the state directory.
JOURNAL_FILE = "journal.sqlite3"
#: ``PRAGMA user_version`` of the schema below; a newer file is refused, not altered.
SCHEMA_VERSION = 1
#: How long a write waits for another orchestrator process sharing the journal.
BUSY_TIMEOUT_S = 10.0

#: Every state a clear row can be in, in the order totals are reported.
STATES: tuple[str, ...] = ("succeeded", "failed", "skipped", "pending", "in_flight")

#: The ``reason`` of a ClearFinished for a clear that succeeded in the resumed run.
#: Compared as a string so this module does not depend on the enum member existing.
_ALREADY_SUCCEEDED = "already_succeeded"

# Clears are a rowid table, kept in the order begin_run inserts them: a lane's first
# clears, then every lane's second, and so on, so the ends that one turn of the event
# loop commits (one clear of many lanes) share a few pages. Kept in (run_id, seq) order,
# as journals before 2026-11-29 keep them (WITHOUT ROWID, which still works), every lane
# has its own page, and each turn's commit wrote all of them to the WAL again: three
# times the cost of an end. The (run_id, seq) key is a unique index either way.
# The state CHECK uses ORs, not IN (...): SQLite builds a temporary table for an IN
# list on every statement run, which doubled the cost of inserts and updates.
_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id      TEXT PRIMARY KEY,
        plan        TEXT NOT NULL,
        digest      TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        exit_code   INTEGER,
        dry_run     INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1))
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_by_digest ON runs (digest, started_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at)",
    """
    CREATE TABLE IF NOT EXISTS clears (
        run_id        TEXT NOT NULL REFERENCES runs (run_id),
        seq           INTEGER NOT NULL,
        token_id      TEXT NOT NULL,
        server        TEXT NOT NULL,
        type_campaign TEXT NOT NULL,
        campaign_id   TEXT NOT NULL,
        result        TEXT NOT NULL,
        state         TEXT NOT NULL DEFAULT 'pending' CHECK (
                          state = 'pending' OR state = 'in_flight' OR state = 'succeeded'
                          OR state = 'failed' OR state = 'skipped'),
        attempts      INTEGER NOT NULL DEFAULT 0,
        http_status   INTEGER,
        code          INTEGER,
        msg           TEXT,
        error         TEXT,
        reason        TEXT,
        updated_at    TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
)

# begin_run stamps its rows in SQL; a recorder stamps its changes with stamps.iso_utc.
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

_INSERT_RUN = "INSERT INTO runs (run_id, plan, digest, started_at, dry_run) VALUES (?, ?, ?, ?, ?)"
_INSERT_CLEAR = (
    "INSERT INTO clears (seq, run_id, token_id, server, type_campaign, campaign_id, result,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A new attempt clears the reason of an earlier session's ending: it no longer applies.
# The recorder counts attempts itself, so replaying a change twice counts it once.
_MARK_STARTED = (
    "UPDATE clears SET state = 'in_flight', attempts = ?, reason = NULL,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)
_MARK_RETRYING = (
    "UPDATE clears SET state = ?, http_status = ?, code = ?, msg = ?, error = ?,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)
# A clear's end sets its attempts too, so it overwrites everything its in_flight mark
# set: a mark still held back when the end comes is never written (JournalRecorder).
_MARK_DONE = (
    "UPDATE clears SET attempts = ?, state = ?, reason = ?, http_status = ?, code = ?,"
    " msg = ?, error = ?, updated_at = ? WHERE run_id = ? AND seq = ?"
)
# The end of nearly every clear: what a success always sets is in the SQL, so each row
# binds 7 values instead of 10 (a third less time per row).
_MARK_SUCCEEDED = (
    "UPDATE clears SET attempts = ?, state = 'succeeded', reason = NULL, http_status = ?,"
    " code = ?, msg = ?, error = NULL, updated_at = ? WHERE run_id = ? AND seq = ?"
)
# What earlier versions wrote at a clear's end, without its attempts: still replayed.
_MARK_FINISHED = (
    "UPDATE clears SET state = ?, reason = ?, http_status = ?, code = ?, msg = ?, error = ?,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)
# A succeeded row keeps its state and answer; any other row (a resume under a new
# run id) records the skip. The guard is in SQL so it costs no extra round trip.
_MARK_ALREADY_SUCCEEDED = (
    f"UPDATE clears SET state = 'skipped', reason = '{_ALREADY_SUCCEEDED}', updated_at = ?"
    " WHERE run_id = ? AND seq = ? AND state != 'succeeded'"
)
_FINISH_RUN = "UPDATE runs SET finished_at = ?, exit_code = ? WHERE run_id = ?"
_REOPEN_RUN = "UPDATE runs SET finished_at = NULL, exit_code = NULL WHERE run_id = ?"

_RUN_COLUMNS = "run_id, plan, digest, started_at, finished_at, exit_code, dry_run"
_SELECT_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
# Dry runs sent nothing, so there is nothing to resume in them.
_SELECT_RESUMABLE = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE digest = ? AND dry_run = 0"
    " AND (finished_at IS NULL OR exit_code != 0)"
    " ORDER BY started_at DESC, rowid DESC LIMIT 1"
)
_SELECT_RUNS = f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?"
_SELECT_TOTALS = "SELECT state, COUNT(*) FROM clears WHERE run_id = ? GROUP BY state"
_SELECT_CLEARS = (
    "SELECT seq, token_id, server, type_campaign, campaign_id, result, state, attempts,"
    " http_status, code, msg, error, reason FROM clears WHERE run_id = ? ORDER BY seq"
)
# What earlier sessions of a resumed run attempted: a recorder counts on from there.
_SELECT_ATTEMPTED = "SELECT seq, attempts FROM clears WHERE run_id = ? AND attempts > 0"
# Every attempt is one call against the token's daily quota, whichever session made it.
_SELECT_CALLS = (
    "SELECT token_id, SUM(attempts) FROM clears WHERE run_id = ?"
    " GROUP BY token_id ORDER BY token_id"
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One journaled run. ``finished_at`` and ``exit_code`` are ``None`` until it ends."""

    run_id: str
    plan: str
    digest: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    dry_run: bool


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run and how many of its clears are in each state (every state present, maybe 0)."""

    run_id: str
    plan: str
    digest: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    dry_run: bool
    totals: dict[str, int]


@dataclass(frozen=True, slots=True)
class ClearRecord:
    """One clear of a run: what it targets, where it got to and the last answer."""

    seq: int
    token_id: str
    server: str
    type_campaign: str
    campaign_id: str
    result: str
    state: str
    attempts: int
    http_status: int | None
    code: int | None
    msg: str | None
    error: str | None
    reason: str | None


# ------------------------------------------------------------------ state directory


def resolve_state_dir(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory: ``--state-dir``, else ``$ORCHESTRATOR_STATE_DIR``, else
    ``$XDG_STATE_HOME/orchestrator``, else ``~/.local/state/orchestrator``.

    ``environ`` defaults to :data:`os.environ`; its ``HOME`` gives ``~``. Empty
    values count as unset, and so does a relative ``XDG_STATE_HOME``, as the XDG
    base directory specification requires. A leading ``~`` is expanded.
    """
    env = os.environ if environ is None else environ
    home = env.get("HOME") or str(Path.home())

    def expand(value: str) -> Path:
        if value == "~" or value.startswith("~/"):
            return Path(home + value[1:])
        return Path(value)

    if cli_value:
        return expand(cli_value)
    explicit = env.get("ORCHESTRATOR_STATE_DIR")
    if explicit:
        return expand(explicit)
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "orchestrator"
    return Path(home) / ".local" / "state" / "orchestrator"


# ------------------------------------------------------------------------ digest


def _digest_row(clear: Clear, token_id: str) -> list[object]:
    # float()/int(): a plan saying "timeout_s: 90" and one saying "90.0" are the same plan.
    # on_failure is a StrEnum, which json writes as its plain value.
    return [
        clear.seq,
        token_id,
        clear.server,
        clear.type_campaign,
        clear.campaign_id,
        clear.result_label,
        clear.on_failure,
        int(clear.retries),
        float(clear.timeout_s),
    ]


_DIGEST_FIELDS = (
    "seq",
    "token_id",
    "server",
    "type_campaign",
    "campaign_id",
    "result",
    "on_failure",
    "retries",
    "timeout_s",
)


def plan_digest(lanes: Sequence[Lane]) -> str:
    """SHA-256 (hex) of a canonical JSON of the expanded clears, in ``seq`` order.

    Each clear contributes its seq, its lane's ``token_id``, server,
    type_campaign, campaign_id, result label, on_failure, retries and
    timeout_s; token values, token names, tags and source lines do not count,
    nor does how clears are grouped into lanes.
    """
    rows = [_digest_row(clear, lane.token_id) for lane in lanes for clear in lane.clears]
    rows.sort()  # seq leads each row and is unique: no key function needed
    document = {"v": 1, "fields": _DIGEST_FIELDS, "clears": rows}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ----------------------------------------------------------------------- journal


def _run_record(row: Sequence[Any]) -> RunRecord:
    run_id, plan, digest, started_at, finished_at, exit_code, dry_run = row
    return RunRecord(run_id, plan, digest, started_at, finished_at, exit_code, bool(dry_run))


def _clear_record(row: Sequence[Any]) -> ClearRecord:
    return ClearRecord(*row)


def _clear_rows(run_id: str, lanes: Sequence[Lane], now: str) -> list[tuple[object, ...]]:
    """The rows of :data:`_INSERT_CLEAR` in the order lanes reach them (see ``_SCHEMA``).

    Every lane's first clear, in lane order, then every lane's second, and so on.
    """
    placed = sorted(
        (position, order, clear, lane.token_id)
        for order, lane in enumerate(lanes)
        for position, clear in enumerate(lane.clears)
        # (position, order) is unique: the clears themselves are never compared
    )
    return [
        (
            clear.seq,
            run_id,
            token_id,
            clear.server,
            clear.type_campaign,
            clear.campaign_id,
            clear.result_label,
            now,
        )
        for _, _, clear, token_id in placed
    ]


def _enter_wal_mode(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out another process that is creating the same journal.

    SQLite answers this pragma with SQLITE_BUSY at once, without the busy timeout,
    while another connection holds a lock on a journal not yet in WAL mode.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            )
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


#: How long a clear's ``in_flight`` mark waits, durable in the tail, before it is written
#: to SQLite. Most calls end sooner, and then only their end is written.
HOLD_STARTS_S = 1.0


class JournalRecorder:
    """Journals one run's events: each change is made durable at once in the run's tail
    file, and written to SQLite together with the other changes of the same loop turn.

    A SQLite commit per clear rewrites whole pages into the WAL; appending lines to a
    file is a single ``write``. So :meth:`__call__` only takes the change, and
    :meth:`settle`, which the scheduler awaits between a clear's ``in_flight`` mark
    and its request, appends what was taken to ``<state dir>/runs/<run_id>.<nonce>.tail``:
    the mark is durable before the request leaves. At the end of each turn of the
    event loop the turn's changes are appended (if nobody settled them) and then
    reach SQLite in one transaction. Each line holds the values it sets, never an
    increment, so replaying a tail that SQLite already has in part or whole gives
    the same rows: when this process dies, the next :meth:`Journal.open` replays and
    removes the tail. :meth:`close` removes it once everything is committed.

    An ``in_flight`` mark alone is held back from SQLite for ``hold_starts_s`` (it is in
    the tail already): when its clear ends first, the end, which sets every column the
    mark sets, is the one ``UPDATE`` written instead of two. A clear still running
    after that shows ``in_flight`` to SQLite's readers; one that gets another change
    (a retry) has its mark written first, so SQLite sees the changes in their order.

    A failed append or commit makes this and every later call raise
    :class:`JournalError`; the tail is then kept for the next open to replay.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        run_id: str,
        tail: _Tail,
        prior_attempts: dict[int, int],
        hold_starts_s: float = HOLD_STARTS_S,
    ) -> None:
        """Use :meth:`Journal.listener` instead."""
        self._conn = conn
        self._path = path
        self._run_id = run_id
        self._tail = tail
        #: Attempts journaled by earlier sessions of a resumed run, by seq.
        self._prior_attempts = prior_attempts
        self._hold_s = hold_starts_s
        self._batch: list[tuple[str, list[Any]]] = []
        #: ``in_flight`` marks not yet in the batch, by seq, with when they are due.
        self._held: dict[int, tuple[tuple[str, list[Any]], float]] = {}
        self._release: asyncio.TimerHandle | None = None
        #: Lines of the batch not yet appended to the tail.
        self._unwritten: list[str] = []
        self._apply_soon = False
        self._now = ""
        self._error: JournalError | None = None

    def __call__(self, event: Event) -> None:
        """Take ``event``'s change: the tail gets it by :meth:`settle`, SQLite by the turn's end."""
        if self._error is not None:
            raise self._error
        if isinstance(event, TokenWaiting):
            return  # changes no clear
        if not self._now:
            # One updated_at for the changes of one turn: they reach SQLite together.
            self._now = iso_utc(time.time(), 3)  # as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ')
        record = _record(event, self._prior_attempts, self._now)
        self._unwritten.append(_line(record))
        self._take(record)
        if self._apply_soon:
            return
        try:
            asyncio.get_running_loop().call_soon(self._apply)
        except RuntimeError:
            self.flush()  # outside an event loop nobody would apply it later
        else:
            self._apply_soon = True

    async def settle(self) -> None:
        """Make every change taken so far durable (one append to the tail).

        The scheduler awaits this between a clear's ``in_flight`` mark and its
        request. Raises :class:`JournalError` if a change could not be recorded.
        """
        self._write_tail()
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Write the changes not yet in SQLite now; raise :class:`JournalError` if that fails."""
        self._release_held(until=math.inf)
        self._apply()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Flush, then remove the tail; a tail not wholly in SQLite is kept for replay."""
        try:
            self.flush()
        finally:
            if self._release is not None:
                self._release.cancel()
            self._tail.close(remove=self._error is None)

    def _take(self, record: tuple[str, list[Any]]) -> None:
        kind, values = record
        seq = values[-1]
        if kind == "started" and self._hold_s > 0:
            self._held[seq] = (record, time.monotonic() + self._hold_s)
            return
        held = self._held.pop(seq, None)
        if held is not None and kind != "done":
            self._batch.append(held[0])  # first, as it came first
        self._batch.append(record)

    def _release_held(self, until: float) -> None:
        """Move the held marks due by ``until`` into the batch (they are due in order)."""
        held = self._held
        while held:
            seq = next(iter(held))
            record, due = held[seq]
            if due > until:
                return
            del held[seq]
            self._batch.append(record)

    def _on_release(self) -> None:
        self._release = None
        self._release_held(until=time.monotonic())
        self._apply()

    def _write_tail(self) -> None:
        if not self._unwritten or self._error is not None:
            return
        lines, self._unwritten = self._unwritten, []
        try:
            self._tail.write("".join(lines))
        except OSError as exc:
            self._fail(exc)

    def _apply(self) -> None:
        # Tail first: SQLite never holds a change the tail lacks, or a replay of the
        # tail would set the row back to an older state.
        self._apply_soon, self._now = False, ""
        self._write_tail()
        if self._held and self._release is None and self._error is None:
            with contextlib.suppress(RuntimeError):  # outside a loop, flush() takes them
                loop = asyncio.get_running_loop()
                self._release = loop.call_later(self._hold_s, self._on_release)
        batch, self._batch = self._batch, []
        if not batch or self._error is not None:
            return
        try:
            _apply_records(self._conn, self._path, self._run_id, batch, strict=True)
        except (JournalError, sqlite3.Error) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        """Keep the first failure; every later call raises it."""
        if self._error is not None:
            return
        if isinstance(exc, JournalError):
            self._error = exc
        else:
            self._error = _error(self._path, "written", exc)
            self._error.__cause__ = exc  # as `raise ... from exc` would: it is raised later


# -- tail files: what a recorder has made durable but maybe not yet written to SQLite

#: Where tails live, beside the run locks.
_TAIL_DIR = "runs"
_TAIL_SUFFIX = ".tail"
_TAIL_VERSION = 1

# One statement per kind of change; every one sets values, none adds to them.
_STATEMENTS = {
    "started": _MARK_STARTED,
    "retrying": _MARK_RETRYING,
    "done": _MARK_DONE,
    "succeeded": _MARK_SUCCEEDED,  # a "done" that succeeded: see _statement_of
    "finished": _MARK_FINISHED,
    "already_succeeded": _MARK_ALREADY_SUCCEEDED,
}
#: Changes that must hit exactly one row (a succeeded row rightly ignores the last).
_ONE_ROW = frozenset(("started", "retrying", "done", "succeeded", "finished"))


class _Tail:
    """An append-only file of one recorder's changes, locked while it lives.

    The ``flock`` tells :func:`_replay_tails` that its recorder is alive (the OS drops
    it when the process dies, however it dies), so a live run's tail is never replayed.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, state_dir: Path, run_id: str) -> _Tail:
        """Create and lock a new tail for ``run_id``; raise ``OSError`` when it cannot be."""
        folder = state_dir / _TAIL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.{secrets.token_hex(4)}{_TAIL_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
        tail = cls(path, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tail.write(json.dumps({"v": _TAIL_VERSION, "run_id": run_id}) + "\n")
        except BaseException:
            tail.close(remove=True)
            raise
        return tail

    def close(self, *, remove: bool) -> None:
        """Close (and with ``remove``, delete) the tail. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(fd)

    def write(self, lines: str) -> None:
        """Append whole lines; raise ``OSError`` when they cannot be written."""
        if self._fd is None:
            raise OSError(errno.EBADF, "the tail file is closed", str(self.path))
        data = lines.encode()
        while data:  # a regular file takes it whole unless the disk fills up
            data = data[os.write(self._fd, data) :]


def _line(record: tuple[str, list[Any]]) -> str:
    """``record`` as one line of JSON, ``["kind",[values...]]``, written by hand (per clear).

    The two changes of every clear have their own renderings, which know the type of
    each value; a test holds all of them to ``json.dumps``.
    """
    kind, values = record
    if kind == "started":
        attempts, now, seq = values
        return f'["started",[{attempts},"{now}",{seq}]]\n'
    if kind == "done":
        return _done_line(*values)
    return f'["{kind}",[{",".join(map(json_value, values))}]]\n'


def _done_line(
    attempts: int,
    outcome: str,
    reason: str | None,
    status: int | None,
    code: int | None,
    msg: str | None,
    error: str | None,
    now: str,
    seq: int,
) -> str:
    reason_text = "null" if reason is None else f'"{reason}"'  # enum values: plain ASCII
    return (
        f'["done",[{attempts},"{outcome}",{reason_text},'
        f"{'null' if status is None else status},{'null' if code is None else code},"
        f"{'null' if msg is None else encode_basestring_ascii(msg)},"
        f'{"null" if error is None else encode_basestring_ascii(error)},"{now}",{seq}]]\n'
    )


def _record(event: Event, prior_attempts: Mapping[int, int], now: str) -> tuple[str, list[Any]]:
    """The change ``event`` makes to its clear's row: a kind and the values it sets."""
    seq = event.clear.seq
    if isinstance(event, ClearStarted):
        attempts = prior_attempts.get(seq, 0) + event.attempt
        return "started", [attempts, now, seq]
    if isinstance(event, ClearFinished):
        if event.reason == _ALREADY_SUCCEEDED:
            return "already_succeeded", [now, seq]
        http_status, code, msg, error = answer_values(event)
        reason = event.reason
        return "done", [
            prior_attempts.get(seq, 0) + event.attempts,
            event.outcome.value,
            None if reason is None else reason.value,
            http_status,
            code,
            msg,
            error,
            now,
            seq,
        ]
    if isinstance(event, ClearRetrying):
        answer = event.answer
        state = "in_flight" if answer.outcome_unknown else "pending"
        values = [state, answer.http_status, answer.code, answer.msg, answer.error, now, seq]
        return "retrying", values
    raise TypeError(f"{type(event).__name__} changes no clear")


def _apply_records(
    conn: sqlite3.Connection,
    path: Path,
    run_id: str,
    records: Sequence[tuple[str, Sequence[Any]]],
    *,
    strict: bool,
) -> None:
    """Write ``records`` to ``run_id``'s rows in one transaction.

    With ``strict``, a change that finds no row rolls everything back and raises
    :class:`JournalError`; a replay skips it instead.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        # One executemany per run of changes of one kind (a turn's ends, mostly), in order.
        for kind, group in itertools.groupby(records, key=_statement_of):
            if kind == "succeeded":
                rows = [(v[0], v[3], v[4], v[5], v[7], run_id, v[8]) for _, v in group]
            else:
                rows = [(*values[:-1], run_id, values[-1]) for _, values in group]
            cursor = conn.executemany(_STATEMENTS[kind], rows)
            if strict and kind in _ONE_ROW and cursor.rowcount != len(rows):
                seq = _first_missing_seq(conn, run_id, [row[-1] for row in rows])
                raise JournalError(f"journal {path} has no clear {seq} in run {run_id}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _statement_of(record: tuple[str, Sequence[Any]]) -> str:
    """The statement that writes ``record``: a ``done`` that succeeded has its own."""
    kind, values = record
    # done: attempts, outcome, reason, http_status, code, msg, error, updated_at, seq
    if kind == "done" and values[1] == "succeeded" and values[2] is None and values[6] is None:
        return "succeeded"
    return kind


def _first_missing_seq(conn: sqlite3.Connection, run_id: str, seqs: list[int]) -> int:
    """The first of ``seqs`` with no row in ``run_id``, to name in an error."""
    query = "SELECT 1 FROM clears WHERE run_id = ? AND seq = ?"
    missing = (seq for seq in seqs if conn.execute(query, (run_id, seq)).fetchone() is None)
    return next(missing, seqs[0])


def _replay_tails(conn: sqlite3.Connection, path: Path) -> None:
    """Write to SQLite the tails that dead recorders left, then remove them.

    A tail whose recorder is alive (its lock is held) is left alone. A last line
    cut short by a crash is ignored: its write never returned, so nothing was sent
    on the strength of it.
    """
    folder = path.parent / _TAIL_DIR
    try:
        tails = sorted(folder.glob(f"*{_TAIL_SUFFIX}"))
    except OSError:
        return
    for tail_path in tails:
        try:
            fd = os.open(tail_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # replayed meanwhile by another process
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its recorder is alive
            _replay(conn, path, tail_path, fd)
        finally:
            os.close(fd)


def _replay(conn: sqlite3.Connection, path: Path, tail_path: Path, fd: int) -> None:
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            lines = handle.read().split(b"\n")[:-1]  # after the last newline: cut short
        if lines:
            run_id, records = _parse_tail(lines)
            _apply_records(conn, path, run_id, records, strict=False)
    except (OSError, ValueError) as exc:
        raise JournalError(f"journal tail {tail_path} cannot be replayed: {exc}") from exc
    with contextlib.suppress(FileNotFoundError):
        tail_path.unlink()


def _parse_tail(lines: list[bytes]) -> tuple[str, list[tuple[str, list[Any]]]]:
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("v") != _TAIL_VERSION:
        raise ValueError("unknown format")
    records = [json.loads(line) for line in lines[1:]]
    if not all(isinstance(r, list) and len(r) == 2 and r[0] in _STATEMENTS for r in records):
        raise ValueError("unknown change")
    return str(header["run_id"]), [(kind, values) for kind, values in records]


class Journal:
    """The journal database of one state directory; one connection, used from one thread.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Writes are committed before the method (or listener) returns.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self._path = path
        self._recorder: JournalRecorder | None = None

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # -- lifecycle

    @classmethod
    def open(cls, state_dir: Path) -> Journal:
        """Open (creating if needed) ``state_dir/journal.sqlite3`` and its directory.

        Raises :class:`JournalError` when the directory or database cannot be
        created, opened or written, or was written by a newer schema.
        """
        path = Path(state_dir) / JOURNAL_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _error(path, "opened", exc) from exc
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT.
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _enter_wal_mode(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _create_schema(conn, path)
            _replay_tails(conn, path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _error(path, "opened", exc) from exc
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection; later calls raise :class:`JournalError`. Idempotent."""
        if self._recorder is not None:
            with contextlib.suppress(JournalError):  # the recorder already raised it
                self._recorder.close()
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            raise _error(self._path, "closed", exc) from exc

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing

    def begin_run(
        self,
        run_id: str,
        plan: str,
        digest: str,
        lanes: Sequence[Lane],
        *,
        started_at: str,
        dry_run: bool = False,
    ) -> None:
        """Record a new run and every clear of ``lanes`` as ``pending``, in one transaction."""
        with self._transaction():
            # One timestamp for every row: strftime per row would be a third of the insert time.
            (now,) = self._conn.execute(f"SELECT {_NOW}").fetchone()
            self._conn.execute(_INSERT_RUN, (run_id, plan, digest, started_at, int(dry_run)))
            self._conn.executemany(_INSERT_CLEAR, _clear_rows(run_id, lanes, now))

    def resume_run(self, run_id: str) -> dict[int, ClearRecord]:
        """Mark ``run_id`` unfinished again and return its clears by seq, as they were left.

        Raises :class:`JournalError` when the journal has no such run.
        """
        with self._transaction():
            if self._conn.execute(_REOPEN_RUN, (run_id,)).rowcount != 1:
                raise JournalError(f"journal {self._path} has no run {run_id}")
            rows = self._conn.execute(_SELECT_CLEARS, (run_id,)).fetchall()
        return {record.seq: record for record in map(_clear_record, rows)}

    def finish_run(self, run_id: str, *, exit_code: int, finished_at: str) -> None:
        """Record how ``run_id`` ended. Raises :class:`JournalError` when there is no such run."""
        self._flush_recorder()
        try:
            cursor = self._conn.execute(_FINISH_RUN, (finished_at, exit_code, run_id))
        except sqlite3.Error as exc:
            raise _error(self._path, "written", exc) from exc
        if cursor.rowcount != 1:
            raise JournalError(f"journal {self._path} has no run {run_id}")

    def listener(self, run_id: str, *, hold_starts_s: float = HOLD_STARTS_S) -> JournalRecorder:
        """A scheduler :class:`~orchestrator.run.events.Recorder` for the clears of ``run_id``.

        A clear's ``in_flight`` mark reaches SQLite ``hold_starts_s`` after it is made
        durable in the tail, unless the clear ended or changed before (0: at the end of
        the turn, as every other change).

        ``ClearStarted`` marks the clear ``in_flight`` and counts the attempt;
        ``ClearRetrying`` stores the answer and leaves it ``in_flight`` when the
        outcome is unknown (wolkvox may still be working), else ``pending``;
        ``ClearFinished`` stores its final state, reason and last answer, except
        that ``already_succeeded`` never overwrites a succeeded row. Raises
        :class:`JournalError` when the journal has no such run or its tail file
        cannot be created.
        """
        if self.run(run_id) is None:
            raise JournalError(f"journal {self._path} has no run {run_id}")
        try:
            prior = dict(self._conn.execute(_SELECT_ATTEMPTED, (run_id,)).fetchall())
            tail = _Tail.create(self._path.parent, run_id)
        except (sqlite3.Error, OSError) as exc:
            raise _error(self._path, "written", exc) from exc
        recorder = JournalRecorder(self._conn, self._path, run_id, tail, prior, hold_starts_s)
        self._recorder = recorder
        return recorder

    # -- reading

    def find_resumable(self, digest: str, run_id: str | None = None) -> RunRecord | None:
        """The run to resume, or ``None``.

        With ``run_id``: that run, whatever its digest (the caller compares
        digests and refuses a mismatch). Without: the latest-started run of
        ``digest`` that is unfinished or ended with a non-zero exit code; dry
        runs are never picked, since they sent nothing.
        """
        if run_id is not None:
            return self.run(run_id)
        row = self._fetchone(_SELECT_RESUMABLE, (digest,))
        return None if row is None else _run_record(row)

    def run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or ``None`` when the journal has no such run."""
        row = self._fetchone(_SELECT_RUN, (run_id,))
        return None if row is None else _run_record(row)

    def runs(self, limit: int = 20) -> list[RunSummary]:
        """The ``limit`` latest-started runs, newest first, with their clears' totals."""
        try:
            records = [_run_record(row) for row in self._conn.execute(_SELECT_RUNS, (limit,))]
            return [self._summary(record) for record in records]
        except sqlite3.Error as exc:
            raise _error(self._path, "read", exc) from exc

    def clears(self, run_id: str) -> list[ClearRecord]:
        """Every clear of ``run_id``, by seq (empty for an unknown run)."""
        try:
            rows = self._conn.execute(_SELECT_CLEARS, (run_id,)).fetchall()
        except sqlite3.Error as exc:
            raise _error(self._path, "read", exc) from exc
        return [_clear_record(row) for row in rows]

    def calls_per_token(self, run_id: str) -> dict[str, int]:
        """Calls made with each token in ``run_id``, over every session of it (resumes add up)."""
        try:
            rows = self._conn.execute(_SELECT_CALLS, (run_id,)).fetchall()
        except sqlite3.Error as exc:
            raise _error(self._path, "read", exc) from exc
        return {token_id: calls for token_id, calls in rows}

    # -- helpers

    def _summary(self, record: RunRecord) -> RunSummary:
        totals = dict.fromkeys(STATES, 0)
        totals.update(self._conn.execute(_SELECT_TOTALS, (record.run_id,)).fetchall())
        return RunSummary(
            run_id=record.run_id,
            plan=record.plan,
            digest=record.digest,
            started_at=record.started_at,
            finished_at=record.finished_at,
            exit_code=record.exit_code,
            dry_run=record.dry_run,
            totals=totals,
        )

    def _fetchone(self, sql: str, params: tuple[object, ...]) -> Sequence[Any] | None:
        try:
            row: Sequence[Any] | None = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _error(self._path, "read", exc) from exc
        return row

    def _flush_recorder(self) -> None:
        # The recorder's changes came first: they reach SQLite before another write.
        if self._recorder is not None:
            self._recorder.flush()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

        IMMEDIATE takes the write lock up front, so a concurrent writer makes us
        wait (busy timeout) at BEGIN instead of failing halfway through.
        """
        self._flush_recorder()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _error(self._path, "written", exc) from exc
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise _error(self._path, "written", exc) from exc
            raise


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    # Inside a write transaction: it also proves the file is writable now, at
    # open, rather than at the first clear's in_flight mark.
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {path} cannot be opened: schema version {version} is newer"
                f" than this orchestrator's {SCHEMA_VERSION}"
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    # Best effort: SQLite may already have rolled back (SQLITE_FULL, I/O errors).
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _error(path: Path, action: str, exc: BaseException) -> JournalError:
    """``journal <path> cannot be <action>: <cause>``."""
    cause = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        cause = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return JournalError(f"journal {path} cannot be {action}: {cause}")
