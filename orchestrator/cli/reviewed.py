"""``run --dry-run --save PATH`` and ``apply PATH``: their options and their two steps.

The file format and every check live in :mod:`orchestrator.plan.reviewed`; this
module wires them to the command line. Both steps end in the same prepare and
perform as ``run`` (``execute``, given by :mod:`orchestrator.cli`), with a check
run on the prepared run before anything is confirmed or sent.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path

from orchestrator.cli.options import add_sending_options, add_state_dir
from orchestrator.errors import PlanError
from orchestrator.plan import reviewed
from orchestrator.plan.model import Plan
from orchestrator.run.prepare import Prepared, Say

__all__ = ["Execute", "add_apply", "add_save", "apply", "save"]

#: ``execute(plan, args, checked=...)``: prepare, call ``checked``, confirm, run.
Execute = Callable[..., int]


def add_save(run: argparse.ArgumentParser) -> None:
    """``run --save PATH``."""
    run.add_argument(
        "--save",
        metavar="PATH",
        help="with --dry-run: save the exact clears to PATH, for `orchestrator apply`",
    )


def add_apply(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], *, epilog: str
) -> argparse.ArgumentParser:
    """The ``apply`` command with the options of ``run`` that keep their meaning for it."""
    parser = commands.add_parser(
        "apply",
        help="send exactly the clears a reviewed file saved (run --dry-run --save)",
        description="Send exactly the clears saved by "
        "`orchestrator run PLAN --dry-run --save PATH`,\n"
        "once nothing they depend on changed since: the file, the plan it came from, the\n"
        "base URL, the tokens. Any change: exit 2, nothing sent.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reviewed", metavar="REVIEWED", help="path of the reviewed file")
    add_sending_options(parser)
    parser.add_argument(
        "--base-url", help="refuse unless the reviewed clears go to this URL template"
    )
    add_state_dir(parser)
    return parser


def save(args: argparse.Namespace, *, load: Callable[[], Plan], execute: Execute, say: Say) -> int:
    """``run --dry-run --save PATH``: the dry run, its clears saved for ``apply``."""
    reviewed.check_save(args.save, args.plan, dry_run=args.dry_run, resume=args.resume)
    plan, plan_sha256 = reviewed.load_for_review(args.plan, load)

    def write(prepared: Prepared) -> None:
        digest = reviewed.save_reviewed(
            args.save,
            plan=prepared.plan,
            lanes=prepared.lanes,
            base_url=prepared.base_url,
            simulated=args.simulate,
            plan_path=str(Path(args.plan).resolve()),
            plan_sha256=plan_sha256,
            tags=args.tag,
        )
        say(f"saved the clears for review to {args.save} ({digest[:19]}); send exactly them:")
        say(f"  orchestrator apply {shlex.quote(args.save)}")

    return execute(plan, args, checked=write)


def apply(
    args: argparse.Namespace, *, run_defaults: argparse.Namespace, execute: Execute, say: Say
) -> int:
    """``apply PATH``: the reviewed clears, sent only if nothing they depend on changed."""
    review = reviewed.load_reviewed(args.reviewed)
    for note in reviewed.check_current(review, base_url=args.base_url):
        say(note)
    # Every option apply lacks at run's default (no dry run, no resume), whatever run gains.
    # A failed apply is resumed from its plan (the same clears make the same run): the
    # ending's resume command is run's, with the plan and tags the review was saved from.
    forced = {
        "simulate": review.simulated,
        "base_url": None,
        "command": "run",
        "plan": review.plan_path,
        "tag": list(review.tags),
    }
    options = argparse.Namespace(**vars(run_defaults) | vars(args) | forced)
    try:
        return execute(
            review.plan, options, checked=lambda p: reviewed.check_prepared(review, p.lanes)
        )
    except PlanError as exc:  # only the tokens are read from a reviewed plan
        raise reviewed.token_problem(review, [p.message for p in exc.problems]) from exc
