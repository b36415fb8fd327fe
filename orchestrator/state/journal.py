"""The run journal: every clear's state in SQLite, so a crashed run can be resumed.

A run is journaled in ``<state dir>/journal.sqlite3`` (a simulated run in the
``simulated/`` folder of the state directory: :func:`run_state_dir`): one ``runs``
row, saying where the run was sent, and one ``clears`` row per clear of the plan.
The scheduler's events move a clear from ``pending`` to ``in_flight`` (committed
*before* its request leaves) and on to
``succeeded``, ``failed`` or ``skipped`` (committed when it ends, before its token
is used again). Each change is one transaction. A resumed run reopens the same run
row, so it keeps counting attempts where the crashed one stopped.

Durability (:mod:`orchestrator.state.database`): a commit survives a SIGKILL or
crash of this process; only an OS crash or power loss can roll back the last
commits. Losing one costs at most a clear sent again on resume, or a token's rest
skipped: never a clear silently left out, since a clear that is not recorded as
succeeded is sent again.

Every ``sqlite3`` or OS failure surfaces as :class:`JournalError`, naming the
database path and the cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import JournalError
from orchestrator.plan.model import Lane
from orchestrator.state.database import NOW, SCHEMA_VERSION, connect, journal_error, transaction
from orchestrator.state.identity import plan_digest
from orchestrator.state.recorder import JournalRecorder
from orchestrator.state.records import STATES, ClearRecord, RunRecord, RunSummary

__all__ = [
    "JOURNAL_FILE",
    "SCHEMA_VERSION",
    "ClearRecord",
    "Journal",
    "JournalError",
    "RunRecord",
    "RunSummary",
    "plan_digest",
    "read_durations",
    "resolve_state_dir",
    "run_state_dir",
]

#: The file inside the state directory.
JOURNAL_FILE = "journal.sqlite3"
#: The folder of the state directory that keeps simulated runs, unless told otherwise.
SIMULATED_DIR = "simulated"

_INSERT_RUN = (
    "INSERT INTO runs (run_id, plan, digest, started_at, dry_run, base_url, simulated, recorded)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(recorded), 0) + 1 FROM runs))"
)
_INSERT_CLEAR = (
    "INSERT INTO clears (run_id, seq, token_id, server, type_campaign, campaign_id, result,"
    f" updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, {NOW})"
)
_FINISH_RUN = "UPDATE runs SET finished_at = ?, exit_code = ? WHERE run_id = ?"
# A resumed run may be sent elsewhere than before: the row names its latest target.
_REOPEN_RUN = (
    "UPDATE runs SET finished_at = NULL, exit_code = NULL,"
    " base_url = COALESCE(?, base_url) WHERE run_id = ?"
)

_RUN_COLUMNS = (
    "run_id, plan, digest, started_at, finished_at, exit_code, dry_run, base_url, simulated"
)
_SELECT_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
# Dry runs sent nothing, so there is nothing to resume in them. A simulated run is no
# run to resume for real, nor the other way round; a run that did not record which it
# was (NULL) may be either.
_SELECT_RESUMABLE = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE digest = ? AND dry_run = 0"
    " AND (simulated IS NULL OR simulated = ?)"
    " AND (finished_at IS NULL OR exit_code != 0) ORDER BY recorded DESC LIMIT 1"
)
_SELECT_RUNS = f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY recorded DESC LIMIT ?"
_SELECT_TOTALS = "SELECT state, COUNT(*) FROM clears WHERE run_id = ? GROUP BY state"
_SELECT_CLEARS = (
    "SELECT seq, token_id, server, type_campaign, campaign_id, result, state, attempts,"
    " http_status, code, msg, error, reason FROM clears WHERE run_id = ? ORDER BY seq"
)
# What earlier sessions of a resumed run attempted: a recorder counts on from there.
_SELECT_ATTEMPTED = "SELECT seq, attempts FROM clears WHERE run_id = ? AND attempts > 0"
# Every attempt is one call against the token's daily quota, whichever session made it.
# A pool's clear names its pool (pool-1) until a token sends it: no token's calls.
_SELECT_CALLS = (
    "SELECT token_id, SUM(attempts) FROM clears WHERE run_id = ?"
    " AND (attempts > 0 OR token_id NOT LIKE 'pool-%')"
    " GROUP BY token_id ORDER BY token_id"
)


# The last successful durations of each clear, newest first, from runs that sent them.
_SELECT_DURATIONS = """
    SELECT server, type_campaign, campaign_id, result, duration_ms FROM (
        SELECT c.server, c.type_campaign, c.campaign_id, c.result, c.duration_ms,
            ROW_NUMBER() OVER (
                PARTITION BY c.server, c.type_campaign, c.campaign_id, c.result
                ORDER BY r.recorded DESC
            ) AS newest
        FROM clears AS c JOIN runs AS r USING (run_id)
        WHERE c.state = 'succeeded' AND c.duration_ms IS NOT NULL AND r.dry_run = 0
    ) WHERE newest <= ?
"""

#: How many of a clear's last successful durations its expected duration is taken from.
DURATIONS_KEPT = 5


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


def read_durations(state_dir: Path) -> dict[tuple[str, str, str, str], list[int]]:
    """:meth:`Journal.durations` of the journal in ``state_dir``, opened read only.

    Nothing is created or changed: ``validate`` and ``--dry-run`` read it too. A journal
    that is absent, or cannot be read (older, locked, damaged), has no durations to give:
    they only decide which clears start first.
    """
    path = Path(state_dir) / JOURNAL_FILE
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        return Journal(conn, path).durations()
    except JournalError:
        return {}
    finally:
        conn.close()


def run_state_dir(cli_value: str | None, *, simulated: bool) -> Path:
    """The state directory a run journals in: :func:`resolve_state_dir`, except that a
    simulated run keeps to its ``simulated/`` folder unless ``--state-dir`` names one.

    So runs against the simulator (the Quickstart's) never land in the journal of
    real runs, nor take their token locks; ``ORCHESTRATOR_STATE_DIR`` names the
    production directory, so only ``--state-dir`` puts them elsewhere.
    """
    state_dir = resolve_state_dir(cli_value)
    return state_dir / SIMULATED_DIR if simulated and not cli_value else state_dir


# ----------------------------------------------------------------------- journal


class Journal:
    """The journal database of one state directory; one connection, used from one thread.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Every write is committed before the method (or listener) returns.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self._path = path

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
            raise journal_error(path, "opened", exc) from exc
        return cls(connect(path), path)

    @classmethod
    def open_holding(cls, state_dir: Path, run_id: str) -> tuple[Journal, RunRecord]:
        """The journal of ``state_dir`` that holds ``run_id``, open, and the run's record.

        A simulated run is kept apart (:func:`run_state_dir`), yet its id is found like
        any other: the journal of simulated runs is searched too, when it exists (the
        search creates none). Raises :class:`JournalError` when neither holds the run.
        """
        searched: list[Path] = []
        for place in (state_dir, state_dir / SIMULATED_DIR):
            if searched and not (place / JOURNAL_FILE).exists():
                continue
            journal = cls.open(place)
            with contextlib.ExitStack() as unless_found:
                unless_found.callback(journal.close)
                record = journal.run(run_id)
                if record is not None:
                    unless_found.pop_all()
                    return journal, record
            searched.append(journal.path)
        raise JournalError(f"no run {run_id} in {' nor in '.join(map(str, searched))}")

    def close(self) -> None:
        """Close the connection; later calls raise :class:`JournalError`. Idempotent."""
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            raise journal_error(self._path, "closed", exc) from exc

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
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
        base_url: str | None = None,
        simulated: bool = False,
    ) -> None:
        """Record a new run and every clear of ``lanes`` as ``pending``, in one transaction.

        ``base_url`` is the API's URL template the run sends to, ``simulated`` whether
        that is the simulator. The run is recorded after every run already in the
        journal, whatever ``started_at`` says: that order is the one
        :meth:`find_resumable` and :meth:`runs` follow.
        """
        rows = [
            (
                run_id,
                clear.seq,
                lane.token_id,
                clear.server,
                clear.type_campaign,
                clear.campaign_id,
                clear.result_label,
            )
            for lane in lanes
            for clear in lane.clears
        ]
        with transaction(self._conn, self._path):
            self._conn.execute(
                _INSERT_RUN,
                (run_id, plan, digest, started_at, int(dry_run), base_url, int(simulated)),
            )
            self._conn.executemany(_INSERT_CLEAR, rows)

    def resume_run(self, run_id: str, *, base_url: str | None = None) -> dict[int, ClearRecord]:
        """Mark ``run_id`` unfinished again and return its clears by seq, as they were left.

        ``base_url``, when given, replaces the target the run records: where its latest
        session sends. Raises :class:`JournalError` when the journal has no such run.
        """
        with transaction(self._conn, self._path):
            if self._conn.execute(_REOPEN_RUN, (base_url, run_id)).rowcount != 1:
                raise JournalError(f"journal {self._path} has no run {run_id}")
            rows = self._conn.execute(_SELECT_CLEARS, (run_id,)).fetchall()
        return {record.seq: record for record in (ClearRecord(*row) for row in rows)}

    def finish_run(self, run_id: str, *, exit_code: int, finished_at: str) -> None:
        """Record how ``run_id`` ended. Raises :class:`JournalError` when there is no such run."""
        with transaction(self._conn, self._path):
            cursor = self._conn.execute(_FINISH_RUN, (finished_at, exit_code, run_id))
            if cursor.rowcount != 1:
                raise JournalError(f"journal {self._path} has no run {run_id}")

    def listener(self, run_id: str) -> JournalRecorder:
        """A scheduler :class:`~orchestrator.run.events.Recorder` for the clears of ``run_id``.

        ``ClearStarted`` marks the clear ``in_flight`` and counts the attempt;
        ``ClearRetrying`` stores the answer and leaves it ``in_flight`` when the
        outcome is unknown (wolkvox may still be working), else ``pending``;
        ``ClearFinished`` stores its final state, reason and last answer, except
        that ``already_succeeded`` never overwrites a succeeded row. Each is
        committed before the listener returns. Raises :class:`JournalError` when
        the journal has no such run.
        """
        if self.run(run_id) is None:
            raise JournalError(f"journal {self._path} has no run {run_id}")
        prior = dict(self._read(_SELECT_ATTEMPTED, (run_id,)))
        return JournalRecorder(self._conn, self._path, run_id, prior)

    # -- reading

    def find_resumable(
        self, digest: str, run_id: str | None = None, *, simulated: bool = False
    ) -> RunRecord | None:
        """The run to resume, or ``None``.

        With ``run_id``: that run, whatever its digest and target (the caller
        compares them and refuses a mismatch). Without: of the runs of ``digest``
        that are unfinished or ended with a non-zero exit code, the one recorded
        last; dry runs are never picked, since they sent nothing, nor runs that
        recorded a ``simulated`` flag other than ``simulated``.
        """
        if run_id is not None:
            return self.run(run_id)
        rows = self._read(_SELECT_RESUMABLE, (digest, int(simulated)))
        return _run_record(rows[0]) if rows else None

    def run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or ``None`` when the journal has no such run."""
        rows = self._read(_SELECT_RUN, (run_id,))
        return _run_record(rows[0]) if rows else None

    def runs(self, limit: int = 20) -> list[RunSummary]:
        """The ``limit`` runs recorded last, the last first, with their clears' totals."""
        summaries = []
        for record in map(_run_record, self._read(_SELECT_RUNS, (limit,))):
            totals = dict.fromkeys(STATES, 0)
            totals.update(self._read(_SELECT_TOTALS, (record.run_id,)))
            summaries.append(RunSummary(**dataclasses.asdict(record), totals=totals))
        return summaries

    def clears(self, run_id: str) -> list[ClearRecord]:
        """Every clear of ``run_id``, by seq (empty for an unknown run)."""
        return [ClearRecord(*row) for row in self._read(_SELECT_CLEARS, (run_id,))]

    def calls_per_token(self, run_id: str) -> dict[str, int]:
        """Calls made with each token in ``run_id``, over every session of it (resumes add up).

        A clear's attempts count for the token of its latest attempt.
        """
        return dict(self._read(_SELECT_CALLS, (run_id,)))

    def durations(self) -> dict[tuple[str, str, str, str], list[int]]:
        """The last :data:`DURATIONS_KEPT` successful durations (ms) of each clear ever
        journaled, newest first.

        Keyed by (server, type_campaign, campaign_id, result label), whatever run or plan
        made them; dry runs sent nothing, so they have none.
        """
        found: dict[tuple[str, str, str, str], list[int]] = {}
        for server, type_campaign, campaign_id, result, ms in self._read(
            _SELECT_DURATIONS, (DURATIONS_KEPT,)
        ):
            found.setdefault((server, type_campaign, campaign_id, result), []).append(ms)
        return found

    # -- helpers

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """The rows ``sql`` selects; an SQLite failure as :class:`JournalError`."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise journal_error(self._path, "read", exc) from exc


# ----------------------------------------------------------------------- helpers


def _run_record(row: Sequence[Any]) -> RunRecord:
    run_id, plan, digest, started_at, finished_at, exit_code, dry_run, base_url, simulated = row
    return RunRecord(
        run_id,
        plan,
        digest,
        started_at,
        finished_at,
        exit_code,
        bool(dry_run),
        base_url,
        None if simulated is None else bool(simulated),
    )
