"""The operator's confirmation before anything is deleted: what they read, what they type.

The prompt names where the clears go and what they delete, set apart by risk.
Deleting every record of a campaign takes the campaign id typed out (``delete``
when several campaigns lose everything), as terraform takes ``yes``: a reflex
``y`` cannot do it. Deleting filtered records only is a y/N question. A resumed
run is asked about what is left, not the whole plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from yarl import URL

from orchestrator.errors import UsageError
from orchestrator.output.views import ALL_MARK, describe_counts
from orchestrator.plan.model import Lane
from orchestrator.run.prepare import Prepared
from orchestrator.wolkvox.client import server_base

__all__ = ["Confirmation", "confirm", "confirmation", "target_of"]


def confirm(prepared: Prepared, stdin: TextIO, stderr: TextIO) -> None:
    """Ask on the terminal; raise :class:`UsageError` unless the operator confirms."""
    if not stdin.isatty():
        raise UsageError(
            "refusing to delete records without confirmation: stdin is not a terminal; "
            "pass --yes to run unattended"
        )
    resume = prepared.state.resume if prepared.state is not None else None
    servers = (c.server for lane in prepared.lanes for c in lane.clears)
    target = target_of(prepared.base_url, servers, simulated=prepared.options.simulate)
    asked = confirmation(
        prepared.lanes,
        target,
        done=resume.succeeded if resume is not None else frozenset(),
        resumed=prepared.run_id if resume is not None else None,
    )
    if asked is None:
        return  # a resumed run with nothing left to send deletes nothing
    stderr.write(f"{asked.text}\n{asked.question}")
    stderr.flush()
    if not asked.confirmed(stdin.readline()):
        raise UsageError("not confirmed; nothing was sent")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What the operator reads before anything is deleted, and what confirms it."""

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
