"""``orchestrator clear``: a one-campaign plan built from command-line options.

The options become a plan document that goes through the same loader as a
plan file, so a one-off clear gets exactly the same validation; problems are
then named by the option that caused them rather than by a YAML path.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from orchestrator.errors import PlanError, Problem
from orchestrator.plan.model import ALL, Plan
from orchestrator.plan.validate import parse_plan

SOURCE = "orchestrator clear"

_OPTION_OF = {
    "server": "--server",
    "type_campaign": "--type-campaign",
    "campaign_id": "--campaign-id",
    "results": "--result",
    "token_env": "--token-env",
    "token_file": "--token-file",
    "retries": "--retries",
    "timeout_s": "--timeout-s",
    "cooldown_s": "--cooldown-s",
}


def plan_from_options(args: argparse.Namespace) -> Plan:
    """The plan of one campaign that ``args`` describe; :class:`PlanError` names options."""
    campaign: dict[str, object] = {
        "campaign_id": args.campaign_id,
        "server": args.server,
        "type_campaign": args.type_campaign,
        "results": list(args.result) if args.result else ALL,
    }
    campaign |= {"token_env": args.token_env} if args.token_env else {"token_file": args.token_file}
    for field in ("retries", "timeout_s"):
        if getattr(args, field) is not None:
            campaign[field] = getattr(args, field)
    settings: dict[str, object] = {}
    if args.cooldown_s is not None:
        settings["cooldown_s"] = args.cooldown_s
    document = {"version": "1", "settings": settings, "campaigns": [campaign]}
    # JSON is YAML whose strings are quoted: every value reaches the loader as written.
    try:
        return parse_plan(json.dumps(document), SOURCE, base_dir=Path.cwd())
    except PlanError as exc:
        raise PlanError([_by_option(p) for p in exc.problems]) from None


def token_problems_by_option(exc: PlanError, args: argparse.Namespace) -> PlanError:
    """The token problems of a one-off clear, named by ``--token-env`` or ``--token-file``."""
    option = "--token-env" if args.token_env else "--token-file"
    return PlanError([Problem(SOURCE, None, option, p.message) for p in exc.problems])


def _by_option(problem: Problem) -> Problem:
    field = re.sub(r"^(campaigns\[0\]|settings)\.?", "", problem.path).split("[")[0]
    option = _OPTION_OF.get(field, problem.path)
    return Problem(SOURCE, None, option, problem.message)
