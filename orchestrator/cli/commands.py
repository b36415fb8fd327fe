"""The ``orchestrator`` command: a thin shell over plan loading and the runner.

Exit codes: 0 every clear succeeded (in this run, or already in the run it
resumes); 1 a clear failed or was skipped; 2 bad usage or plan, nothing sent;
130/143 interrupted by SIGINT/SIGTERM. A reader that stops reading the output
(``orchestrator runs | head -1``) is no error: the command stops writing, quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import NoReturn, TextIO

import anyio

from orchestrator.cli.argtypes import count, fault, fraction, non_negative, port
from orchestrator.cli.completion import SHELLS, completion_script
from orchestrator.cli.confirm import confirm
from orchestrator.cli.options import add_sending_options, add_state_dir
from orchestrator.cli.resume_option import command_again, resume_spelled_apart, settle_resume
from orchestrator.cli.reviewed import add_apply, add_save, apply, save
from orchestrator.errors import OrchestratorError, PlanError, Terminated, UsageError
from orchestrator.output.history import runs_json, runs_table, show_json, show_text
from orchestrator.output.streams import flush, print_line
from orchestrator.output.views import render_schedule, schedule_document
from orchestrator.plan.model import DEFAULT_BASE_URL, Plan
from orchestrator.plan.one_off import plan_from_options, token_problems_by_option
from orchestrator.plan.schema import render_schema
from orchestrator.plan.tokens import build_lanes, missing_tokens
from orchestrator.plan.validate import load_plan
from orchestrator.run.ending import EXIT_USAGE
from orchestrator.run.execute import perform
from orchestrator.run.openfiles import allow_every_open_file
from orchestrator.run.order import in_start_order
from orchestrator.run.prepare import LATEST, Prepared, RunOptions, check_request_urls, prepare
from orchestrator.state.journal import (
    JOURNAL_FILE,
    SIMULATED_DIR,
    Journal,
    resolve_state_dir,
)
from orchestrator.wolkvox.faults import Faults, combined
from orchestrator.wolkvox.simulator import SimulatorConfig, serve

EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: The help's list of exit codes; ``{given}`` is what ``run`` or ``clear`` is given.
EXIT_CODES = """\
exit codes:
  0    every clear succeeded, in this run or before it was resumed (or --dry-run)
  1    at least one clear failed or was skipped
  2    bad usage, {given} or token: nothing was sent
  130  interrupted by SIGINT (Ctrl-C)
  143  interrupted by SIGTERM"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    # As PID 1 in a container, SIGTERM does nothing without a handler. Until a run takes
    # the signal over, nothing has been sent, so stopping at once is right.
    signal.signal(signal.SIGTERM, _terminate)
    parser = _parser()
    args = parser.parse_args(resume_spelled_apart(sys.argv[1:] if argv is None else argv))
    try:
        code: int = args.handler(args)
        flush(sys.stdout)  # what a reader that went away (`| head -1`) left unread is dropped
        return code
    except PlanError as exc:
        _say("\n".join(str(p) for p in exc.problems))
        faulty = "the options have" if args.command == "clear" else "the plan has"
        _say(f"nothing was sent: {faulty} errors")
        return EXIT_USAGE
    except Terminated:
        _say("terminated before anything was sent")
        return EXIT_SIGTERM
    except OrchestratorError as exc:
        _say(f"orchestrator: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted before anything was sent")
        return EXIT_SIGINT


def entry() -> NoReturn:
    """The ``orchestrator`` command: :func:`main`, then exit with its code."""
    sys.exit(main())


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Reset wolkvox dialer campaigns in bulk, one call at a time per token.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a plan and print its schedule")
    validate.add_argument("plan", help="path of the YAML plan")
    _add_tag(validate)
    validate.add_argument(
        "--json",
        action="store_true",
        help="print the clears, lanes and counts as JSON (errors too, with exit 2)",
    )
    validate.set_defaults(handler=_validate)

    run = commands.add_parser(
        "run",
        help="clear the campaigns of a plan",
        epilog=EXIT_CODES.format(given="plan"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Optional here so that `run --resume PLAN` can take PLAN back from --resume.
    run.add_argument("plan", nargs="?", help="path of the YAML plan")
    _add_tag(run)
    run.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        metavar="RUN_ID",
        help="continue the latest unfinished or failed run of this plan "
        "(--resume=RUN_ID: that run)",
    )
    run.add_argument(
        "--resume-id", metavar="RUN_ID", help="continue the run RUN_ID (same as --resume=RUN_ID)"
    )
    _add_run_options(run)
    add_save(run)
    run.set_defaults(handler=_run)

    apply = add_apply(commands, epilog=EXIT_CODES.format(given="reviewed file"))
    apply.set_defaults(handler=_apply)

    clear = commands.add_parser(
        "clear",
        help="clear one campaign now, without a plan file (for runbooks)",
        description="Clear one campaign now, described by options instead of a plan file.\n"
        "Without --result it deletes EVERY record of the campaign.",
        epilog=EXIT_CODES.format(given="options"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clear.add_argument("--server", required=True, help="server code, e.g. 0014")
    clear.add_argument("--type-campaign", required=True, help="predictive or preview")
    clear.add_argument("--campaign-id", required=True, help="the campaign's numeric id")
    clear.add_argument(
        "--result",
        action="append",
        default=[],
        metavar="FILTER",
        help="delete only records with this result (repeatable); without it: ALL records",
    )
    source = clear.add_mutually_exclusive_group(required=True)
    source.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    source.add_argument("--token-file", metavar="PATH", help="file holding the token")
    clear.add_argument("--retries", help="retries of a retryable answer (default 3)")
    clear.add_argument("--timeout-s", help="seconds a call may take (default 90)")
    clear.add_argument("--cooldown-s", help="rest after a timed-out call (default 60)")
    clear.add_argument(
        "--resume-id",
        dest="resume",
        metavar="RUN_ID",
        help="continue the one-off clear RUN_ID, given the same options (or --resume=RUN_ID)",
    )
    _add_run_options(clear, one_off=True)
    clear.set_defaults(handler=_clear)

    runs = commands.add_parser("runs", help="list recent runs from the journal")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.add_argument("--limit", type=count, default=20, help="how many runs (default 20)")
    runs.add_argument(
        "--simulated",
        action="store_true",
        help="list the runs made with --simulate (kept apart unless --state-dir was given)",
    )
    add_state_dir(runs)
    runs.set_defaults(handler=_runs)

    show = commands.add_parser(
        "show", help="print every clear of a journaled run (simulated runs included)"
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_state_dir(show)
    show.set_defaults(handler=_show)

    schema = commands.add_parser("schema", help="print the plan's JSON Schema (for editors)")
    schema.set_defaults(handler=_schema)

    simulate = commands.add_parser(
        "simulate",
        help="serve the wolkvox API simulator",
        description="Serve a stand-in for wolkvox's API. Each fault option takes a FAULT: RATE "
        "(0-1, the share of calls it hits) or campaign=ID[:N] (every call of that "
        "campaign, or its first N); repeat an option to hit several campaigns.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    simulate.add_argument("--port", type=port, default=8080, help="port (0: a free one)")
    simulate.add_argument(
        "--latency-ms", type=non_negative, default=50.0, help="time each clear takes"
    )
    simulate.add_argument(
        "--fail-rate", type=fraction, default=0.0, help="share of calls answered 503"
    )
    simulate.add_argument(
        "--token-limit", type=count, default=1_000_000, help="calls per token per day"
    )
    simulate.add_argument(
        "--shared-limit",
        action="store_true",
        help="the daily limit counts every token's calls on a server together",
    )
    simulate.add_argument(
        "--seed", type=int, help="seed for --fail-rate and fault rates (same answers each run)"
    )
    for option, text in _FAULT_OPTIONS:
        simulate.add_argument(option, type=fault, action="append", metavar="FAULT", help=text)
    simulate.add_argument(
        "--slow-s", type=non_negative, default=120.0, help="how long a --slow answer takes"
    )
    simulate.add_argument(
        "--burst-length", type=count, default=5, help="answers in each --burst-5xx"
    )
    simulate.set_defaults(handler=_simulate)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script: add `source <(orchestrator completion bash)` "
        "to ~/.bashrc, or `source <(orchestrator completion zsh)` to ~/.zshrc after compinit.",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(handler=functools.partial(_completion, parser))
    return parser


def _version() -> str:
    try:
        return metadata.version("orchestrator")
    except metadata.PackageNotFoundError:
        return "(version unknown: not installed)"


_FAULT_OPTIONS = (
    ("--token-rejected", "403 PLEASE VALIDATE TOKEN, and for every later call of that token"),
    ("--quota-spent", "the token's daily quota is spent: 403 TOKEN LIMIT EXCEEDED from then on"),
    ("--maintenance", "403 FORBIDDEN whose text speaks of maintenance"),
    ("--simultaneous", "403 EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN"),
    ("--slow", "answer after --slow-s seconds (past the plan's timeout_s), the clear done"),
    ("--drop", "drop the connection without an answer; the clear is done all the same"),
    (
        "--burst-5xx",
        "5xx answers (JSON and a proxy's HTML) for the server's next --burst-length calls",
    ),
)


def _add_run_options(parser: argparse.ArgumentParser, *, one_off: bool = False) -> None:
    """The options ``run`` and ``clear`` share: one engine, one set of guards.

    ``clear`` has no plan, so its help speaks of its options (``one_off``).
    """
    add_sending_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="send nothing; print what would be sent"
    )
    default_url = f"default {DEFAULT_BASE_URL}" if one_off else "default from the plan"
    parser.add_argument("--base-url", help=f"URL template of the API ({default_url})")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator on a free loopback port (no tokens needed); "
        "journaled apart from real runs unless --state-dir is given",
    )
    parser.add_argument(
        "--max-clears",
        type=count,
        metavar="N",
        help="refuse more than N clears (one per --result)"
        if one_off
        else "refuse a plan of more than N clears",
    )
    add_state_dir(parser)


def _add_tag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only campaigns carrying TAG (repeatable)",
    )


def _say(text: str, stream: TextIO | None = None) -> None:
    print_line(text, stream or sys.stderr)


def _load(path: str, tags: list[str]) -> Plan:
    plan = load_plan(path)
    if tags:
        plan = plan.with_tags(frozenset(tags))
        if not plan.clears:
            raise UsageError(f"no campaign in {path} carries the tag(s) {', '.join(tags)}")
    return plan


def _validate(args: argparse.Namespace) -> int:
    if args.json:
        return _validate_json(args)
    plan = _load(args.plan, args.tag)
    check_request_urls(plan, plan.settings.base_url, "base_url")  # as run would refuse it
    for warning in missing_tokens(plan):
        _say(warning)
    lanes, _ = in_start_order(plan, build_lanes(plan.clears, None), resolve_state_dir(None))
    _out(render_schedule(plan, lanes))
    return 0


def _validate_json(args: argparse.Namespace) -> int:
    """``validate --json``: one JSON document on stdout, whether the plan is good or not."""
    try:
        plan = _load(args.plan, args.tag)
        check_request_urls(plan, plan.settings.base_url, "base_url")
    except PlanError as exc:
        errors = [{"line": p.line, "path": p.path, "message": p.message} for p in exc.problems]
    except UsageError as exc:
        errors = [{"line": None, "path": "", "message": str(exc)}]
    else:
        lanes, _ = in_start_order(plan, build_lanes(plan.clears, None), resolve_state_dir(None))
        print(json.dumps(schedule_document(plan, lanes, missing_tokens(plan)), indent=2))
        return 0
    print(json.dumps({"valid": False, "plan": args.plan, "errors": errors}, indent=2))
    return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    settle_resume(args)
    if args.save:
        return _save(args)
    return _execute(_load(args.plan, args.tag), args)


def _save(args: argparse.Namespace) -> int:
    return save(args, load=lambda: _load(args.plan, args.tag), execute=_execute, say=_say)


def _apply(args: argparse.Namespace) -> int:
    run_defaults = _parser().parse_args(["run", args.reviewed])
    return apply(args, run_defaults=run_defaults, execute=_execute, say=_say)


def _clear(args: argparse.Namespace) -> int:
    plan = plan_from_options(args)
    try:
        return _execute(plan, args)
    except PlanError as exc:  # a token that cannot be read: name the option that gave it
        raise token_problems_by_option(exc, args) from None


def _execute(
    plan: Plan, args: argparse.Namespace, *, checked: Callable[[Prepared], None] | None = None
) -> int:
    """Prepare the run, call ``checked`` with it (a refusal there sends nothing), run it."""
    options = RunOptions(
        dry_run=args.dry_run,
        base_url=args.base_url,
        report=args.report,
        log_format=args.log_format,
        simulate=args.simulate,
        max_clears=args.max_clears,
        lock_url=args.lock_url,
        state_dir=args.state_dir,
        resume=args.resume,
        metrics_file=args.metrics_file,
        check_quota=args.check_quota,
        resume_command=command_again(args),
    )
    with prepare(plan, options, say=_say) as prepared:
        if checked is not None:
            checked(prepared)
        if not (args.dry_run or args.yes):
            confirm(prepared, sys.stdin, sys.stderr)
        return anyio.run(functools.partial(perform, prepared, say=_say))


def _completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(parser, args.shell))
    return 0


def _schema(args: argparse.Namespace) -> int:
    _out(render_schema().rstrip("\n"))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    allow_every_open_file()  # a connection per token calling it, however many
    faults = Faults(
        token_rejected=combined(args.token_rejected),
        quota_spent=combined(args.quota_spent),
        maintenance=combined(args.maintenance),
        simultaneous=combined(args.simultaneous),
        slow=combined(args.slow),
        drop=combined(args.drop),
        burst=combined(args.burst_5xx),
        slow_s=args.slow_s,
        burst_length=args.burst_length,
    )
    config = SimulatorConfig(
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        token_limit=args.token_limit,
        seed=args.seed,
        shared_limit=args.shared_limit,
        faults=faults,
    )
    with contextlib.suppress(KeyboardInterrupt, Terminated):
        asyncio.run(
            serve(
                config,
                args.host,
                args.port,
                on_ready=lambda url: _say(f"simulating wolkvox at {url}"),
            )
        )
    return 0


def _runs(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    simulated = state_dir / SIMULATED_DIR
    with Journal.open(simulated if args.simulated else state_dir) as journal:
        runs = journal.runs(args.limit)
    for line in [runs_json(runs)] if args.json else runs_table(runs):
        _out(line)
    if not args.simulated and (simulated / JOURNAL_FILE).exists():
        _say("runs made with --simulate are kept apart: orchestrator runs --simulated")
    return 0


def _show(args: argparse.Namespace) -> int:
    journal, record = Journal.open_holding(resolve_state_dir(args.state_dir), args.run_id)
    with journal:
        clears = journal.clears(args.run_id)
        calls = journal.calls_per_token(args.run_id)
    for line in [show_json(record, clears, calls)] if args.json else show_text(record, clears):
        _out(line)
    return 0


def _out(text: str) -> None:
    """Print ``text`` on stdout (see :func:`_say`)."""
    _say(text, sys.stdout)
