"""How ``run`` is told which run to resume, apart from which plan to run.

``--resume`` alone means the latest unfinished or failed run of the plan;
``--resume=RUN_ID`` and ``--resume-id RUN_ID`` name a run. argparse cannot tell
``--resume=X`` from ``--resume X``, and the second is how ``run --resume PLAN``
is written, so the joined spelling is renamed before parsing and the rest is
settled after it. The ending of a run that left something to do prints the
command that resumes it: :func:`command_again`, then ``--resume=RUN_ID``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from orchestrator.errors import UsageError
from orchestrator.run.prepare import LATEST

__all__ = ["RUN_ID", "command_again", "resume_spelled_apart", "settle_resume"]

#: Options a resume repeats to continue the run where and as it was going. Not
#: ``--yes``: a person resuming by hand is asked first.
_KEPT = ("--state-dir", "--base-url", "--lock-url", "--report", "--metrics-file")
_KEPT_FLAGS = ("--simulate", "--check-quota")
#: The options that make a one-off clear what it is.
_ONE_OFF = ("--server", "--type-campaign", "--campaign-id")
_ONE_OFF_ALSO = ("--token-env", "--token-file", "--retries", "--timeout-s", "--cooldown-s")

#: What a run id looks like (``20261128T045500Z-3fa9c1``), to tell one from a plan path.
RUN_ID: Final = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def resume_spelled_apart(argv: Sequence[str]) -> list[str]:
    """``--resume=ID`` as ``--resume-id ID``: only a value joined by ``=`` is surely a run id.

    ``--resume X`` may be ``run --resume plan.yaml``; :func:`settle_resume` decides.
    """
    spelled: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":  # what follows is positional, whatever it looks like
            return spelled + list(argv[index:])
        if arg.startswith("--resume="):
            spelled += ["--resume-id", arg.removeprefix("--resume=")]
        else:
            spelled.append(arg)
    return spelled


def settle_resume(args: argparse.Namespace) -> None:
    """The plan and the run to resume, whichever way they were written.

    ``run --resume PLAN`` resumes PLAN's latest run; ``run PLAN --resume ID`` (and
    ``run --resume ID PLAN``), where the plan is given apart, still name run ID.
    Sets ``args.plan`` and ``args.resume``; raises :class:`UsageError` when unclear.
    """
    written = args.resume
    if written not in (None, LATEST) and args.plan is None:
        args.plan, written = written, LATEST
    if args.plan is None:
        raise UsageError("run: give the plan: orchestrator run PLAN [--resume[=RUN_ID]]")
    if args.resume_id is not None:
        if not args.resume_id:
            raise UsageError("--resume=: give a run id, or write --resume for the latest run")
        if written not in (None, LATEST):
            raise UsageError(f"--resume {written} and --resume-id: name the run once")
        written = args.resume_id
    args.resume = written
    if RUN_ID.fullmatch(args.plan) and not Path(args.plan).exists():
        raise UsageError(
            f"{args.plan} is a run id, not a plan: orchestrator run PLAN --resume={args.plan}"
        )


def command_again(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``run`` or ``clear`` command of ``args`` again, without the run to resume."""
    if args.command == "run":
        what = [args.plan, *(word for tag in args.tag for word in ("--tag", tag))]
    else:
        results = [word for result in args.result for word in ("--result", result)]
        what = [*_given(args, *_ONE_OFF), *results, *_given(args, *_ONE_OFF_ALSO)]
    flags = [flag for flag in _KEPT_FLAGS if getattr(args, _dest(flag))]
    return ("orchestrator", args.command, *what, *_given(args, *_KEPT), *flags)


def _given(args: argparse.Namespace, *options: str) -> list[str]:
    """Each of ``options`` that has a value, followed by it."""
    values = {option: getattr(args, _dest(option)) for option in options}
    return [word for option, value in values.items() if value for word in (option, value)]


def _dest(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")
