"""The open-file budget of a run, settled before anything is sent.

Every lane running keeps a connection and its token's lock file open. Many systems
let a process open 1,024 files (``ulimit -n``), which a plan of ``max_parallel_tokens:
1000`` outgrows: lanes would fail mid-run with "Too many open files". So a run raises
its own soft limit as far as it needs and the hard limit allows (as ``ulimit -n`` in
the shell would), or refuses to start, naming the figures.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from orchestrator.errors import UsageError

__all__ = ["allow_every_open_file", "ensure_open_files", "files_needed"]

#: Files a run may have open whatever its size: the standard streams, the journal with
#: its WAL and index, the run lock, the event loop's, a Redis connection.
BASE_FILES = 64

Limits = tuple[int, int]


def files_needed(lanes_at_once: int, *, simulated: bool) -> int:
    """Open files a run of ``lanes_at_once`` lanes may need at most.

    Per lane: its connection and its lock file (or its Redis connection), and with
    the built-in simulator the simulator's end of the connection too.
    """
    return BASE_FILES + lanes_at_once * (3 if simulated else 2)


def ensure_open_files(
    needed: int,
    *,
    lanes_at_once: int,
    get: Callable[[int], Limits] = resource.getrlimit,
    set_: Callable[[int, Limits], None] = resource.setrlimit,
) -> None:
    """Let this process open ``needed`` files, or raise :class:`UsageError`.

    Raises the soft limit to ``needed`` when it is lower; refuses when the hard
    limit is lower (only an administrator can raise that).
    """
    kind = resource.RLIMIT_NOFILE
    soft, hard = get(kind)
    if _at_least(soft, needed):
        return
    if _at_least(hard, needed):
        try:
            set_(kind, (needed, hard))
        except (ValueError, OSError):
            pass
        else:
            return
    raise UsageError(
        f"{lanes_at_once} lanes at once (max_parallel_tokens) may need {needed} open files, "
        f"but this process may open only {soft} (ulimit -n; hard limit {_text(hard)}): "
        "lower max_parallel_tokens or raise the limit; nothing was sent"
    )


def allow_every_open_file(
    *,
    get: Callable[[int], Limits] = resource.getrlimit,
    set_: Callable[[int, Limits], None] = resource.setrlimit,
) -> int:
    """Raise the soft limit to the hard limit, as a server does; return the soft limit now.

    The simulator keeps a connection per token calling it: it cannot know how many.
    A limit that cannot be raised is left as it was.
    """
    kind = resource.RLIMIT_NOFILE
    soft, hard = get(kind)
    if soft == hard:
        return soft
    try:
        set_(kind, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def _at_least(limit: int, needed: int) -> bool:
    return limit == resource.RLIM_INFINITY or limit >= needed


def _text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
