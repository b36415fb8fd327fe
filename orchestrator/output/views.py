"""Human-readable views of what a plan will do: the schedule and the confirmation.

These never show a token: lanes are named by token name and ``token_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yarl import URL

from orchestrator.plan.model import Clear, Lane, Plan
from orchestrator.wolkvox.client import server_base

ALL_MARK = "ALL RECORDS"


def describe_counts(clears: Sequence[Clear]) -> str:
    """``5 clears: 1 unfiltered (all records), 4 filtered by result``."""
    unfiltered = sum(1 for c in clears if c.result is None)
    return (
        f"{len(clears)} clear{'s' if len(clears) != 1 else ''}: "
        f"{unfiltered} unfiltered (all records), {len(clears) - unfiltered} filtered by result"
    )


def render_schedule(plan: Plan, lanes: Sequence[Lane]) -> str:
    """The unfiltered clears set apart, then every clear lane by lane in sending order."""
    clears = [c for lane in lanes for c in lane.clears]
    unfiltered = [c for c in clears if c.result is None]
    lines = [f"{plan.source}: {describe_counts(clears)}, in {len(lanes)} lane(s)"]
    if unfiltered:
        lines.append(f"{len(unfiltered)} unfiltered clear(s) delete EVERY record of a campaign:")
        lines.extend(f"  {_clear_line(clear)}" for clear in unfiltered)
    lines.append(
        f"{len(clears) - len(unfiltered)} filtered clear(s) delete only records with the "
        "given result."
    )
    lines.append("Every clear, lane by lane, in sending order:")
    for number, lane in enumerate(lanes, 1):
        names = ", ".join(lane.token_names)
        label = names if lane.secret is None else f"{names} (token_id {lane.token_id})"
        lines.append(f"lane {number}: {label}: {len(lane.clears)} clear(s), one at a time")
        lines.extend(f"  {_clear_line(clear)}" for clear in lane.clears)
    return "\n".join(lines)


def schedule_document(
    plan: Plan, lanes: Sequence[Lane], warnings: Sequence[str]
) -> dict[str, object]:
    """``validate --json``: the counts, lanes and clears a script can rely on."""
    clears = [c for lane in lanes for c in lane.clears]
    unfiltered = sum(1 for c in clears if c.result is None)
    return {
        "valid": True,
        "plan": plan.source,
        "counts": {
            "clears": len(clears),
            "unfiltered": unfiltered,
            "filtered": len(clears) - unfiltered,
            "campaigns": len({c.target for c in clears}),
            "lanes": len(lanes),
        },
        "warnings": list(warnings),
        "lanes": [
            {"lane": number, "tokens": list(lane.token_names), "seqs": [c.seq for c in lane.clears]}
            for number, lane in enumerate(lanes, 1)
        ],
        "clears": [
            {
                "seq": c.seq,
                "server": c.server,
                "type_campaign": c.type_campaign,
                "campaign_id": c.campaign_id,
                "result": c.result_label,
                "unfiltered": c.result is None,
                "token": str(c.token),
                "on_failure": str(c.on_failure),
                "timeout_s": c.timeout_s,
                "retries": c.retries,
                "tags": list(c.tags),
                "line": c.line,
            }
            for c in sorted(clears, key=lambda c: c.seq)
        ],
    }


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What the operator reads before anything is deleted, and what confirms it.

    Deleting every record of a campaign takes the campaign id typed out (``delete``
    when several campaigns lose everything), as terraform takes ``yes``: a reflex
    ``y`` cannot do it. Deleting filtered records only is a y/N question.
    """

    text: str
    question: str
    #: The exact answer that confirms, or ``None`` for a y/N question.
    answer: str | None

    def confirmed(self, typed: str) -> bool:
        """Whether the line the operator typed confirms."""
        typed = typed.strip()
        if self.answer is None:
            return typed.lower() in ("y", "yes")
        return typed == self.answer


def target_of(base_url: str, servers: Iterable[str], *, simulated: bool) -> str:
    """The hosts the clears go to, as the prompt names them (``simulator`` for ``--simulate``)."""
    if simulated:
        return "simulator"
    hosts = dict.fromkeys(URL(server_base(base_url, s), encoded=True).host or "?" for s in servers)
    return ", ".join(hosts)


def confirmation(
    lanes: Sequence[Lane],
    target: str,
    *,
    done: frozenset[int] = frozenset(),
    resumed: str | None = None,
) -> Confirmation | None:
    """The confirmation of the clears not in ``done``; ``None`` when none is left.

    ``resumed`` is the id of the run being resumed: its prompt lists what is left.
    """
    planned = [c for lane in lanes for c in lane.clears]
    clears = [c for c in planned if c.seq not in done]
    if not clears:
        return None
    campaigns: dict[tuple[str, str, str], list[str]] = {}
    for clear in clears:
        campaigns.setdefault(clear.target, []).append(clear.result or ALL_MARK)
    everything = [t for t, results in campaigns.items() if ALL_MARK in results]
    filtered = [t for t in campaigns if t not in everything]
    lines = [f"Target: {target}"]
    if resumed is not None:
        lines.append(
            f"Resuming run {resumed}: {len(clears)} of {len(planned)} clear(s) left, "
            f"{len(planned) - len(clears)} done before."
        )
    lines.append(
        f"This run deletes records from {len(campaigns)} campaign(s), {describe_counts(clears)}."
    )
    if everything:
        lines.append(f"EVERY record of {len(everything)} campaign(s):")
        lines.extend(f"  server {s} {t} campaign {c}: {ALL_MARK}" for s, t, c in everything)
    if filtered:
        lines.append(f"Records with these results in {len(filtered)} campaign(s):")
        lines.extend(
            f"  server {s} {t} campaign {c}: {', '.join(campaigns[(s, t, c)])}"
            for s, t, c in filtered
        )
    text = "\n".join(lines)
    if len(everything) == 1:
        campaign_id = everything[0][2]
        question = (
            f"To delete EVERY record of campaign {campaign_id} on {target}, "
            f"type the campaign id ({campaign_id}): "
        )
        return Confirmation(text, question, campaign_id)
    if everything:
        question = (
            f"To delete EVERY record of {len(everything)} campaigns on {target}, type delete: "
        )
        return Confirmation(text, question, "delete")
    return Confirmation(text, f"Delete these records on {target}? [y/N] ", None)


def _clear_line(clear: Clear) -> str:
    result = clear.result or ALL_MARK
    return (
        f"#{clear.seq:<5} server {clear.server} {clear.type_campaign:<10} "
        f"campaign {clear.campaign_id}: {result}"
    )
