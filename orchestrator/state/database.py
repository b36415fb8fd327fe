"""The journal's SQLite database: opening it, its schema, and one transaction per write.

The database is in WAL mode with ``synchronous=NORMAL``. A transaction is in the
write-ahead log, at least in the OS page cache, when its commit returns, so it
survives a SIGKILL or crash of this process; only an OS crash or power loss can
roll back the last commits (SQLite's documentation of ``PRAGMA synchronous``).
Every ``sqlite3`` failure surfaces as :class:`JournalError`, naming the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import JournalError

#: How long a write waits for another orchestrator process sharing the journal.
BUSY_TIMEOUT_S = 10.0

#: The time of a change, as SQL: UTC to the millisecond.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# Each step takes a journal from the version before it to the next; a new journal takes
# every step, so old and new journals end up with the same tables.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE runs (
            run_id      TEXT PRIMARY KEY,
            plan        TEXT NOT NULL,
            digest      TEXT NOT NULL,
            started_at  TEXT NOT NULL,
            finished_at TEXT,
            exit_code   INTEGER,
            dry_run     INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1))
        )
        """,
        """
        CREATE TABLE clears (
            run_id        TEXT NOT NULL REFERENCES runs (run_id),
            seq           INTEGER NOT NULL,
            token_id      TEXT NOT NULL,
            server        TEXT NOT NULL,
            type_campaign TEXT NOT NULL,
            campaign_id   TEXT NOT NULL,
            result        TEXT NOT NULL,
            state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN
                              ('pending', 'in_flight', 'succeeded', 'failed', 'skipped')),
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
    ),
    (
        # Runs are ordered by when they were recorded, never by the wall clock, which can
        # be stepped back. An explicit counter, because VACUUM may renumber the rowids of
        # a table without an INTEGER PRIMARY KEY. A version-1 journal's runs keep the
        # order of their rowids.
        "ALTER TABLE runs ADD COLUMN recorded INTEGER NOT NULL DEFAULT 0",
        "UPDATE runs SET recorded = rowid",
        "CREATE UNIQUE INDEX runs_by_record ON runs (recorded)",
        "DROP INDEX IF EXISTS runs_by_digest",
        "DROP INDEX IF EXISTS runs_by_start",
        "CREATE INDEX runs_of_digest ON runs (digest, recorded)",
    ),
    (
        # Where a run went: the API's URL template (never a token: it has no user info or
        # query) and whether it was the simulator. NULL in runs recorded before version 3,
        # which did not say.
        "ALTER TABLE runs ADD COLUMN base_url TEXT",
        "ALTER TABLE runs ADD COLUMN simulated INTEGER CHECK (simulated IN (0, 1))",
    ),
    (
        # How long each clear took, so the next run can start the longest first.
        "ALTER TABLE clears ADD COLUMN duration_ms INTEGER",
    ),
)
#: ``PRAGMA user_version`` of the schema above; a newer file is refused, not altered.
SCHEMA_VERSION = len(_MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open the database at ``path`` (creating it) with the current schema.

    Raises :class:`JournalError` when it cannot be created, opened or written, or
    was written by a newer schema.
    """
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _enter_wal_mode(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise journal_error(path, "opened", exc) from exc
        raise
    return conn


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


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, creating it in a new journal.

    Inside a write transaction: it also proves the file is writable now, at open,
    rather than at the first clear's ``in_flight`` mark.
    """
    with transaction(conn, path, action="opened"):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {path} cannot be opened: schema version {version} is newer"
                f" than this orchestrator's {SCHEMA_VERSION}"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def transaction(conn: sqlite3.Connection, path: Path, action: str = "written") -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors as JournalError.

    IMMEDIATE takes the write lock up front, so a concurrent writer makes us wait
    (busy timeout) at BEGIN instead of failing halfway through.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise journal_error(path, action, exc) from exc
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, sqlite3.Error):
            raise journal_error(path, action, exc) from exc
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    # Best effort: SQLite may already have rolled back (SQLITE_FULL, I/O errors).
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def journal_error(path: Path, action: str, exc: BaseException) -> JournalError:
    """``journal <path> cannot be <action>: <cause>``."""
    cause = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        cause = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return JournalError(f"journal {path} cannot be {action}: {cause}")
