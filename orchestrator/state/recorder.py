"""Journals one run's events as they happen: one transaction per change to a clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.errors import JournalError
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Reason,
    TokenLeftPool,
    TokenResting,
    TokenWaiting,
    answer_values,
)
from orchestrator.state.database import NOW, transaction

# A new attempt clears the reason of an earlier session's ending: it no longer applies.
# It names the token it is sent with, which may have been rotated since the run began.
_MARK_STARTED = (
    "UPDATE clears SET state = 'in_flight', token_id = ?, attempts = ?, reason = NULL,"
    f" updated_at = {NOW} WHERE run_id = ? AND seq = ?"
)
_MARK_RETRYING = (
    "UPDATE clears SET state = ?, http_status = ?, code = ?, msg = ?, error = ?,"
    f" updated_at = {NOW} WHERE run_id = ? AND seq = ?"
)
_MARK_DONE = (
    "UPDATE clears SET state = ?, attempts = ?, reason = ?, http_status = ?, code = ?,"
    f" msg = ?, error = ?, duration_ms = ?, updated_at = {NOW} WHERE run_id = ? AND seq = ?"
)
# A succeeded row keeps its state and answer; any other row records the skip.
_MARK_ALREADY_SUCCEEDED = (
    f"UPDATE clears SET state = 'skipped', reason = '{Reason.ALREADY_SUCCEEDED.value}',"
    f" updated_at = {NOW} WHERE run_id = ? AND seq = ? AND state != 'succeeded'"
)


class JournalRecorder:
    """A scheduler :class:`~orchestrator.run.events.Recorder` for the clears of one run.

    Each change is committed, in its own transaction, before the call returns:
    a clear's ``in_flight`` mark before its request leaves, its end before its
    token is used again. A change that cannot be committed is rolled back and
    raises :class:`JournalError`; so does every later call, so the journal keeps
    what happened up to its first failure and nothing after it.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, run_id: str, prior_attempts: dict[int, int]
    ) -> None:
        """Use :meth:`orchestrator.state.journal.Journal.listener` instead."""
        self._conn = conn
        self._path = path
        self._run_id = run_id
        #: Attempts journaled by earlier sessions of a resumed run, by seq.
        self._prior_attempts = prior_attempts
        self._error: JournalError | None = None

    def __call__(self, event: Event) -> None:
        """Commit ``event``'s change to its clear's row; raise :class:`JournalError` if it fails."""
        if self._error is not None:
            raise self._error
        if isinstance(event, TokenWaiting | TokenLeftPool) or (
            isinstance(event, TokenResting) and event.answer is None
        ):
            return  # changes no clear
        sql, values, must_match = self._change(event)
        seq = event.clear.seq
        try:
            with transaction(self._conn, self._path):
                cursor = self._conn.execute(sql, (*values, self._run_id, seq))
                if must_match and cursor.rowcount != 1:
                    raise JournalError(
                        f"journal {self._path} has no clear {seq} in run {self._run_id}"
                    )
        except JournalError as exc:
            self._error = exc
            raise

    async def settle(self) -> None:
        """Return at once: every change was committed when it was heard.

        Raises the :class:`JournalError` of a change that could not be.
        """
        if self._error is not None:
            raise self._error

    def _change(self, event: Event) -> tuple[str, tuple[object, ...], bool]:
        """The statement for ``event``, the values it sets, and whether it must find its row."""
        prior = self._prior_attempts.get(event.clear.seq, 0)
        if isinstance(event, ClearStarted):
            return _MARK_STARTED, (event.token_id, prior + event.attempt), True
        if isinstance(event, ClearRetrying | TokenResting) and event.answer is not None:
            # The answer a rest waits on (a timeout, "under maintenance") is kept as a retry's.
            answer = event.answer
            state = "in_flight" if answer.outcome_unknown else "pending"
            answered = (state, answer.http_status, answer.code, answer.msg, answer.error)
            return _MARK_RETRYING, answered, True
        if isinstance(event, ClearFinished):
            if event.reason is Reason.ALREADY_SUCCEEDED:
                return _MARK_ALREADY_SUCCEEDED, (), False
            http_status, code, msg, error = answer_values(event)
            reason = None if event.reason is None else event.reason.value
            values = (
                event.outcome.value,
                prior + event.attempts,
                reason,
                http_status,
                code,
                msg,
                error,
                event.duration_ms,
            )
            return _MARK_DONE, values, True
        raise TypeError(f"{type(event).__name__} changes no clear")
