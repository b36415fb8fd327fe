"""The ``orchestrator`` command: a thin shell over plan loading and the runner.

Exit codes: 0 every clear succeeded; 1 a clear failed or was skipped; 2 bad
usage or plan, nothing sent; 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .errors import OrchestratorError, PlanError, UsageError
from .plan import Lane, Plan

EXIT_USAGE = 2
EXIT_SIGINT = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except PlanError as exc:
        _say("\n".join(str(p) for p in exc.problems))
        _say("nothing was sent: the plan has errors")
        return EXIT_USAGE
    except OrchestratorError as exc:
        _say(f"orchestrator: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted before anything was sent")
        return EXIT_SIGINT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Reset wolkvox dialer campaigns in bulk, one call at a time per token.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a plan and print its schedule")
    validate.add_argument("plan", help="path of the YAML plan")
    _add_tag(validate)
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="clear the campaigns of a plan")
    run.add_argument("plan", help="path of the YAML plan")
    run.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    run.add_argument("--dry-run", action="store_true", help="send nothing; print what would be sent")
    run.add_argument("--base-url", help="URL template of the API (default from the plan)")
    run.add_argument("--report", metavar="PATH", help="write a JSON report of the run to PATH")
    _add_tag(run)
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="JSON lines, or a readable rendering (auto: console on a terminal)",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator on a free loopback port (no tokens needed)",
    )
    run.set_defaults(handler=_run)

    simulate = commands.add_parser("simulate", help="serve the wolkvox API simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=_port, default=8080)
    simulate.add_argument("--latency-ms", type=_non_negative, default=50.0)
    simulate.add_argument("--fail-rate", type=_fraction, default=0.0, help="share of calls answered 503")
    simulate.set_defaults(handler=_simulate)
    return parser


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _add_tag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only campaigns carrying TAG (repeatable)",
    )


def _say(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stderr, flush=True)


def _load(path: str, tags: list[str]) -> Plan:
    from .validate import load_plan

    plan = load_plan(path)
    if tags:
        plan = plan.with_tags(frozenset(tags))
        if not plan.clears:
            raise UsageError(f"no campaign in {path} carries the tag(s) {', '.join(tags)}")
    return plan


def _validate(args: argparse.Namespace) -> int:
    from .schedule_view import render_schedule
    from .tokens import build_lanes, missing_tokens

    plan = _load(args.plan, args.tag)
    for warning in missing_tokens(plan):
        _say(warning)
    _say(render_schedule(plan, build_lanes(plan.clears, None)), sys.stdout)
    return 0


def _run(args: argparse.Namespace) -> int:
    from .validate import check_base_url

    plan = _load(args.plan, args.tag)
    if args.simulate and args.base_url:
        raise UsageError("--simulate and --base-url cannot be used together")
    if args.base_url and (why := check_base_url(args.base_url)):
        raise UsageError(f"--base-url: {why}")
    if args.report:
        _check_writable(args.report)
    lanes = _lanes_for_run(plan, args)
    if not (args.dry_run or args.yes):
        _confirm(lanes)
    return asyncio.run(_run_async(plan, lanes, args))


def _lanes_for_run(plan: Plan, args: argparse.Namespace) -> tuple[Lane, ...]:
    from .schedule_view import render_schedule
    from .tokens import build_lanes, missing_tokens, placeholder_tokens, read_tokens

    if args.simulate:
        lanes = build_lanes(plan.clears, placeholder_tokens(plan))
    elif args.dry_run and missing_tokens(plan):
        # A dry run shows the schedule even where tokens are absent, as validate does.
        for warning in missing_tokens(plan):
            _say(warning)
        lanes = build_lanes(plan.clears, None)
    else:
        lanes = build_lanes(plan.clears, read_tokens(plan))
    if args.dry_run:
        _say(render_schedule(plan, lanes))
    return lanes


def _confirm(lanes: tuple[Lane, ...]) -> None:
    from .schedule_view import render_confirmation

    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to delete records without confirmation: stdin is not a terminal; "
            "pass --yes to run unattended"
        )
    _say(render_confirmation(lanes))
    sys.stderr.write("Delete these records? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed; nothing was sent")


def _check_writable(report: str) -> None:
    folder = Path(report).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"--report: cannot write into {folder}")


async def _run_async(plan: Plan, lanes: tuple[Lane, ...], args: argparse.Namespace) -> int:
    from .log import make_logger, pick_format
    from .runner import RunSpec, execute, new_run_id

    async with contextlib.AsyncExitStack() as stack:
        base_url = args.base_url or plan.settings.base_url
        if args.simulate and not args.dry_run:
            from .simulator import SERVER_PREFIX, Simulator

            simulator = await stack.enter_async_context(Simulator())
            base_url = simulator.url + SERVER_PREFIX
        run_id = new_run_id()
        logger = make_logger(pick_format(args.log_format, sys.stdout), run_id)
        spec = RunSpec(plan, lanes, base_url, logger, run_id, args.dry_run, args.report)
        result = await execute(spec)
    totals = result.totals
    _say(
        f"{totals['succeeded']} succeeded, {totals['failed']} failed, {totals['skipped']} skipped "
        f"in {result.duration_ms / 1000:.1f} s (run {run_id}, exit {result.exit_code})"
    )
    return result.exit_code


def _simulate(args: argparse.Namespace) -> int:
    from .simulator import SimulatorConfig, serve

    config = SimulatorConfig(latency_ms=args.latency_ms, fail_rate=args.fail_rate)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port, on_ready=lambda url: _say(f"simulating wolkvox at {url}")))
    return 0
