"""The one exception tree of orchestrator.

Everything the package raises on purpose derives from :class:`OrchestratorError`.
Library errors (YAML, aiohttp, OS) are translated where they enter, with
``raise ... from exc``, so callers never have to know which library failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class OrchestratorError(Exception):
    """Base class of every error orchestrator raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a plan, located as precisely as the source allows.

    ``line`` is 1-based, or ``None`` when the problem is not tied to a line
    (a missing file, say). ``path`` is the field path such as
    ``campaigns[2].results[1]``, or ``""`` for the document itself.
    """

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PlanError(OrchestratorError):
    """A plan cannot be used; ``problems`` lists every reason, in source order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(OrchestratorError):
    """The command line asks for something that cannot be done; nothing was sent."""


class TooManyNodes(Exception):
    """Stops the YAML composer when a plan has more nodes than it may: it becomes a PlanError."""


class TooManyItems(Exception):
    """Stops the YAML composer when one list or mapping grows too long: it becomes a PlanError."""

    def __init__(self, shape: str, line: int) -> None:
        super().__init__()
        self.shape = shape
        self.line = line


class Terminated(OrchestratorError):
    """SIGTERM arrived before a run took the signal over: nothing was sent."""


class JournalError(OrchestratorError):
    """The journal cannot be opened, read or written; the message names the file and why."""


class LockError(OrchestratorError):
    """Token locking cannot be set up or kept working; nothing is sent without it."""


class ReportError(OrchestratorError):
    """The report could not be written."""


class MetricsError(OrchestratorError):
    """The metrics file could not be written."""


class TokenInfoError(OrchestratorError):
    """``token_info`` gave no usable answer; the message never contains the token."""

    def __init__(
        self, message: str, *, http_status: int | None = None, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class TransportError(OrchestratorError):
    """A call did not get a complete HTTP answer.

    Which subclass is raised is the fact the scheduler acts on: a
    :class:`ConnectionFailed` never reached the server, an :class:`OutcomeUnknown`
    may have. Messages never contain the token.
    """

    #: True when the request may have reached the server: it may still be working on
    #: the token, so the caller must let the token cool down before using it again.
    outcome_unknown: ClassVar[bool] = False


class ConnectionFailed(TransportError):
    """No connection could be made (DNS, refused, TLS): nothing was sent."""


class OutcomeUnknown(TransportError):
    """The request may have been written, but no complete answer came back."""

    outcome_unknown: ClassVar[bool] = True


class CallTimeout(OutcomeUnknown):
    """The call got no complete answer within its ``timeout_s``."""

    def __init__(self, message: str = "timeout") -> None:
        super().__init__(message)


class ConnectionLost(OutcomeUnknown):
    """The connection broke, or the answer was malformed, after the request may have left."""
