"""The run journal: every clear's state in SQLite, so a crashed run can be resumed.

A run is journaled in ``<state dir>/journal.sqlite3``: one ``runs`` row and one
``clears`` row per clear of the plan. The scheduler's events move a clear from
``pending`` to ``in_flight`` (committed *before* its request leaves) and on to
``succeeded``, ``failed`` or ``skipped``. A resumed run reopens the same run row,
so it keeps counting attempts where the crashed one stopped.

Commits are grouped: a clear's ``in_flight`` mark is committed right before its
request leaves, together with every outcome written since the last commit, so a
run costs about one commit per clear (:class:`JournalRecorder`).

Durability: WAL with ``synchronous=NORMAL``. Every commit is written to the WAL
file before it returns, so it lives in the OS page cache and survives a SIGKILL
or crash of this process, and an orderly reboot; only an OS crash or power loss
can lose the last commits before a checkpoint. FULL adds an fsync per commit:
measured on the development VM it nearly doubled the gap between an answer and the next
request on a token (3.8 to 6.8 ms, docs/performance.md) for that case alone, and
losing a commit to power loss costs at most a clear sent again on resume or a
token's cooldown skipped, never a clear silently left out.

Every ``sqlite3`` or OS failure surfaces as :class:`JournalError`, naming the
database path and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import OrchestratorError
from .events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    TokenWaiting,
    outcome_fields,
)
from .plan import Clear, Lane
from .stamps import iso_utc

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
    ) WITHOUT ROWID
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
_MARK_STARTED = (
    "UPDATE clears SET state = 'in_flight', attempts = attempts + 1, reason = NULL,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)
_MARK_RETRYING = (
    "UPDATE clears SET state = ?, http_status = ?, code = ?, msg = ?, error = ?,"
    " updated_at = ? WHERE run_id = ? AND seq = ?"
)
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
# Every attempt is one call against the token's daily quota, whichever session made it.
_SELECT_CALLS = (
    "SELECT token_id, SUM(attempts) FROM clears WHERE run_id = ?"
    " GROUP BY token_id ORDER BY token_id"
)


class JournalError(OrchestratorError):
    """The journal cannot be opened, read or written; the message names the file and why."""


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
    """The rows of :data:`_INSERT_CLEAR`, by seq: appends to the (run_id, seq) b-tree."""
    rows: list[tuple[object, ...]] = [
        (
            clear.seq,
            run_id,
            lane.token_id,
            clear.server,
            clear.type_campaign,
            clear.campaign_id,
            clear.result_label,
            now,
        )
        for lane in lanes
        for clear in lane.clears
    ]
    rows.sort()  # seq leads each row and is unique: no key function needed
    return rows


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


class JournalRecorder:
    """Journals one run's events, committing each clear's start with what came before it.

    Each event's change is written at once into an open transaction. :meth:`settle`
    commits it: the scheduler calls it between a clear's ``in_flight`` mark and its
    request, so the mark is durable before the request leaves, and the outcomes
    written since the last commit (other lanes', this lane's previous clear) go
    in the same commit. Changes nobody settles (a lane's last outcome) are
    committed on the next turn of the event loop. That is about one commit per
    clear instead of two, and no request waits for a turn of the loop. A failed
    write or commit rolls the open changes back and makes this and every later
    call raise :class:`JournalError`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, run_id: str) -> None:
        """Use :meth:`Journal.listener` instead."""
        self._conn = conn
        self._path = path
        self._run_id = run_id
        self._open = False
        self._in_loop = False
        self._now = ""
        self._error: JournalError | None = None

    def __call__(self, event: Event) -> None:
        """Write ``event``'s change into the open transaction."""
        if self._error is not None:
            raise self._error
        if isinstance(event, TokenWaiting):
            return  # changes no clear
        try:
            if not self._open:
                self._begin()
            statement, params, one_row = _change(event, self._run_id, self._now)
            cursor = self._conn.execute(statement, params)
        except sqlite3.Error as exc:
            raise self._fail(_error(self._path, "written", exc)) from exc
        if one_row and cursor.rowcount != 1:
            raise self._fail(
                JournalError(
                    f"journal {self._path} has no clear {event.clear.seq} in run {self._run_id}"
                )
            )
        if not self._in_loop:
            self.flush()  # outside an event loop nobody would commit it later

    async def settle(self) -> None:
        """Commit every change written so far; raise :class:`JournalError` if it cannot be."""
        self.flush()

    def flush(self) -> None:
        """Commit the open changes now, if any; raise :class:`JournalError` if they cannot be."""
        if self._open:
            self._commit()
        if self._error is not None:
            raise self._error

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._open = True
        # One updated_at for the changes of one commit: they become durable together.
        self._now = iso_utc(time.time(), 3)  # as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ')
        try:
            asyncio.get_running_loop().call_soon(self._commit)
        except RuntimeError:
            self._in_loop = False
        else:
            self._in_loop = True

    def _commit(self) -> None:
        if not self._open:
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(_error(self._path, "written", exc))
            return
        self._open = False

    def _fail(self, error: JournalError) -> JournalError:
        if self._error is None:
            self._error = error
        _rollback(self._conn)
        self._open = False
        return self._error


def _change(event: Event, run_id: str, now: str) -> tuple[str, tuple[object, ...], bool]:
    """The statement that records ``event``, its parameters, and whether it must hit one row."""
    seq = event.clear.seq
    if isinstance(event, ClearStarted):
        return _MARK_STARTED, (now, run_id, seq), True
    if isinstance(event, ClearFinished):
        if event.reason == _ALREADY_SUCCEEDED:
            # No row check: a succeeded row is rightly left as it is.
            return _MARK_ALREADY_SUCCEEDED, (now, run_id, seq), False
        fields = outcome_fields(event)
        params = (
            fields["outcome"],
            fields["reason"],
            fields["http_status"],
            fields["code"],
            fields["msg"],
            fields["error"],
            now,
            run_id,
            seq,
        )
        return _MARK_FINISHED, params, True
    if isinstance(event, ClearRetrying):
        answer = event.answer
        state = "in_flight" if answer.outcome_unknown else "pending"
        retrying: tuple[object, ...] = (
            state, answer.http_status, answer.code, answer.msg, answer.error, now, run_id, seq
        )  # fmt: skip
        return _MARK_RETRYING, retrying, True
    raise TypeError(f"{type(event).__name__} changes no clear")


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
                self._recorder.flush()
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

    def listener(self, run_id: str) -> JournalRecorder:
        """A scheduler :class:`~orchestrator.events.Recorder` for the clears of ``run_id``.

        ``ClearStarted`` marks the clear ``in_flight`` and counts the attempt;
        ``ClearRetrying`` stores the answer and leaves it ``in_flight`` when the
        outcome is unknown (wolkvox may still be working), else ``pending``;
        ``ClearFinished`` stores its final state, reason and last answer, except
        that ``already_succeeded`` never overwrites a succeeded row.
        """
        recorder = JournalRecorder(self._conn, self._path, run_id)
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
        # Its open batch holds the transaction: commit it before another one starts.
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
