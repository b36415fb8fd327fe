"""Reviewed plans: the exact clears of a dry run, saved for a second pair of eyes, then applied.

``orchestrator run PLAN --dry-run --save reviewed.json`` writes what the dry run
showed (:func:`save_reviewed`): every clear with what it sends and how it retries,
the lanes and their order, the base URL, the run settings, the plan's path and the
SHA-256 of its bytes, and a digest of the file's own content. Tokens appear by
reference only (``env:NAME``, ``file:PATH``), never by value or fingerprint.

``orchestrator apply reviewed.json`` reads it back (:func:`load_reviewed`) and
refuses, before anything is sent, when anything the clears depend on changed:
the file itself (its digest), the plan it came from (if still there), the base
URL, or, once the tokens are read, the lanes they make (:func:`check_prepared`).
Every refusal is a :class:`~orchestrator.errors.UsageError` naming what changed.

The digest catches a file changed by hand or by accident; it is not a signature:
whoever can write the file can recompute it, so keep reviewed files where only
the reviewers can write.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema_rs

from orchestrator.errors import UsageError
from orchestrator.output.atomic import FILE_MODE, write_text_atomically
from orchestrator.plan.model import (
    Clear,
    Lane,
    OnFailure,
    Order,
    Plan,
    Settings,
    TokenPool,
    TokenRef,
)
from orchestrator.plan.reviewed_schema import FORMAT, SCHEMA
from orchestrator.state.identity import plan_digest

__all__ = [
    "FORMAT",
    "Reviewed",
    "check_current",
    "check_prepared",
    "check_save",
    "file_sha256",
    "load_for_review",
    "load_reviewed",
    "save_reviewed",
    "token_problem",
]


#: The largest reviewed file read: far above 100,000 clears, far below a mistake.
MAX_BYTES: Final = 64 * 1024 * 1024

#: A file holding a lock URL with a password is readable by its owner only.
_PRIVATE_MODE: Final = 0o600

#: A lane as the file writes it: its token references, then its clears' seqs in order.
LaneShape = tuple[tuple[str, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A reviewed file read back whole, its digest and consistency verified."""

    path: str
    #: The clears and settings, ready for :func:`orchestrator.run.prepare.prepare`.
    plan: Plan
    base_url: str
    simulated: bool
    plan_path: str
    plan_sha256: str
    #: The ``--tag`` selection the clears were saved with.
    tags: tuple[str, ...]
    lanes: tuple[LaneShape, ...]
    #: The journal's identity of these clears (:func:`plan_digest`).
    clears_digest: str
    digest: str


def save_reviewed(
    path: str,
    *,
    plan: Plan,
    lanes: tuple[Lane, ...],
    base_url: str,
    simulated: bool,
    plan_path: str,
    plan_sha256: str,
    tags: list[str],
) -> str:
    """Write the reviewed file for this dry run atomically; return its digest.

    Raises :class:`UsageError` when it cannot be written.
    """
    settings = plan.settings
    document: dict[str, Any] = {
        "format": FORMAT,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "plan": {"path": plan_path, "sha256": plan_sha256, "tags": sorted(tags)},
        "base_url": base_url,
        "simulated": simulated,
        "settings": {
            "max_parallel_tokens": settings.max_parallel_tokens,
            "cooldown_s": float(settings.cooldown_s),
            "maintenance_wait_s": float(settings.maintenance_wait_s),
            "order": settings.order.value,
            "lock_url": settings.lock_url,
        },
        "lanes": [{"tokens": list(lane.token_names), "seqs": _seqs(lane)} for lane in lanes],
        "clears": [_clear_fields(c) for c in sorted(plan.clears, key=lambda c: c.seq)],
        "clears_digest": plan_digest(lanes),
    }
    document["digest"] = _content_digest(document)
    # The lock URL is the one secret a plan may hold (a Redis password): keep it private.
    has_password = settings.lock_url is not None and urlsplit(settings.lock_url).password
    try:
        write_text_atomically(
            path, _render(document), mode=_PRIVATE_MODE if has_password else FILE_MODE
        )
    except OSError as exc:
        raise UsageError(f"--save: cannot write {path} ({exc.strerror or exc})") from exc
    return str(document["digest"])


def check_save(save: str, plan_path: str, *, dry_run: bool, resume: str | None) -> None:
    """Refuse a ``--save`` that cannot be done, before the dry run shows anything."""
    if not dry_run:
        raise UsageError("--save needs --dry-run: it saves what a dry run shows, for review")
    if resume is not None:
        raise UsageError("--save cannot be used with --resume: a reviewed plan starts a new run")
    target = Path(save).resolve()
    if target == Path(plan_path).resolve():
        raise UsageError(f"--save: {save} is the plan itself; save the review elsewhere")
    if target.is_dir() or not (target.parent.is_dir() and os.access(target.parent, os.W_OK)):
        raise UsageError(f"--save: cannot write {save}")


def load_for_review(plan_path: str, load: Callable[[], Plan]) -> tuple[Plan, str]:
    """``load()`` the plan and the SHA-256 of the bytes it was loaded from.

    The file is hashed before and after: one changed meanwhile is refused, so the
    saved digest always belongs to the clears saved with it.
    """
    before = _plan_sha256(plan_path)
    plan = load()
    if _plan_sha256(plan_path) != before:
        raise UsageError(f"--save: {plan_path} changed while it was read; nothing was saved")
    return plan, before


def _plan_sha256(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise UsageError(f"--save: cannot read {path} ({exc.strerror or exc})") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the regular file at ``path``; raises :class:`OSError`.

    Opened without blocking and refused unless regular: a FIFO put where the plan
    was would hang the open, and a device such as /dev/zero never ends.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_reviewed(path: str) -> Reviewed:
    """Read ``path`` and verify its digest and consistency; :class:`UsageError` names why not."""
    document = _read_document(path)
    recorded = document.get("digest") if isinstance(document, dict) else None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _refused(path, f"is not a reviewed plan (its format is not {FORMAT})")
    if recorded != _content_digest(document):
        raise _refused(
            path,
            "was changed after it was saved (its content no longer matches its digest); "
            "save the review again with `orchestrator run PLAN --dry-run --save`",
        )
    validator = jsonschema_rs.validator_for(SCHEMA)
    errors = [f"{_where(e.instance_path)}: {e.message}" for e in validator.iter_errors(document)]
    if errors:
        raise _refused(path, "is not a valid reviewed plan: " + "; ".join(errors[:5]))
    return _reviewed(path, document)


def check_current(reviewed: Reviewed, *, base_url: str | None) -> list[str]:
    """Refuse when the plan file or the base URL changed since the review; return notes."""
    if base_url is not None and base_url != reviewed.base_url:
        raise _refused(
            reviewed.path,
            f"sends to {reviewed.base_url}, but --base-url says {base_url}; "
            "a different base URL needs a new review",
        )
    notes = []
    if reviewed.simulated:
        notes.append(f"{reviewed.path} was saved with --simulate: applying it to the simulator")
    plan_path = reviewed.plan_path
    if not os.path.lexists(plan_path):
        gone = f"{reviewed.path}: the plan {plan_path} is gone; applying the clears as reviewed"
        return [*notes, gone]
    try:
        now = file_sha256(plan_path)
    except OSError as exc:
        raise _refused(
            reviewed.path, f"cannot check its plan {plan_path} ({exc.strerror or exc})"
        ) from exc
    if now != reviewed.plan_sha256:
        raise _refused(
            reviewed.path,
            f"was saved from {plan_path} with SHA-256 {reviewed.plan_sha256[:12]}, "
            f"which is now {now[:12]}: the plan changed since the review; review it again",
        )
    return notes


def check_prepared(reviewed: Reviewed, lanes: tuple[Lane, ...]) -> None:
    """Refuse when the tokens read now group the clears otherwise than reviewed."""
    now = tuple((lane.token_names, tuple(_seqs(lane))) for lane in lanes)
    if _unordered(now, reviewed.plan) != _unordered(reviewed.lanes, reviewed.plan):
        raise _refused(
            reviewed.path,
            f"was reviewed with other lanes than the tokens read now make "
            f"({_lane_change(reviewed.lanes, now, reviewed.plan)}; token references "
            "holding the same token share one lane); review it again",
        )
    if plan_digest(lanes) != reviewed.clears_digest:  # the same clears, field for field
        raise _refused(reviewed.path, "does not describe the clears it would send")


def _unordered(lanes: tuple[LaneShape, ...], plan: Plan) -> set[LaneShape]:
    """The lanes apart from what ``settings.order`` decides when the run starts.

    Which lane starts first, and in which order a pool's campaigns start, follow the
    journal's durations (``order: longest_first``): they may differ from the review's.
    Which clears share a token, and a single token's sending order, may not.
    """
    pooled = {c.seq for c in plan.clears if isinstance(c.token, TokenPool)}
    return {
        (tokens, tuple(sorted(seqs)) if pooled.intersection(seqs) else seqs)
        for tokens, seqs in lanes
    }


def token_problem(reviewed: Reviewed, messages: list[str]) -> UsageError:
    """The refusal when a token the reviewed clears need cannot be read now."""
    return _refused(reviewed.path, "needs tokens that cannot be read: " + "; ".join(messages))


# --------------------------------------------------------------------------- reading


def _read_document(path: str) -> object:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _refused(path, f"cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_BYTES:
        raise _refused(path, f"is larger than {MAX_BYTES} bytes: not a reviewed plan")
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _refused(path, f"is not a reviewed plan (not JSON: {exc})") from exc


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        keys = [key for key, _ in pairs]
        raise ValueError(f"the key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return document


def _reviewed(path: str, document: dict[str, Any]) -> Reviewed:
    clears = tuple(_clear(fields) for fields in document["clears"])
    lanes = tuple((tuple(lane["tokens"]), tuple(lane["seqs"])) for lane in document["lanes"])
    _check_consistent(path, clears, lanes, document["clears_digest"])
    settings = document["settings"]
    plan = Plan(
        source=path,
        settings=Settings(
            max_parallel_tokens=settings["max_parallel_tokens"],
            cooldown_s=float(settings["cooldown_s"]),
            maintenance_wait_s=float(settings["maintenance_wait_s"]),
            order=Order(settings["order"]),
            base_url=document["base_url"],
            lock_url=settings["lock_url"],
        ),
        clears=clears,
    )
    return Reviewed(
        path=path,
        plan=plan,
        base_url=document["base_url"],
        simulated=document["simulated"],
        plan_path=document["plan"]["path"],
        plan_sha256=document["plan"]["sha256"],
        tags=tuple(document["plan"]["tags"]),
        lanes=lanes,
        clears_digest=document["clears_digest"],
        digest=document["digest"],
    )


def _check_consistent(
    path: str, clears: tuple[Clear, ...], lanes: tuple[LaneShape, ...], digest: str
) -> None:
    """What the schema cannot say: seqs in order, lanes that hold each clear once."""
    seqs = [clear.seq for clear in clears]
    if any(a >= b for a, b in itertools.pairwise(seqs)):
        raise _refused(path, "lists its clears out of seq order")
    in_lanes = [seq for _, lane_seqs in lanes for seq in lane_seqs]
    if sorted(in_lanes) != seqs:
        raise _refused(path, "has lanes that do not hold each clear exactly once")
    refs_of = {clear.seq: [str(ref) for ref in clear.token.refs] for clear in clears}
    for tokens, lane_seqs in lanes:
        if any(ref not in tokens for seq in lane_seqs for ref in refs_of[seq]):
            raise _refused(path, "has a lane holding a clear of another token")
    # plan_digest sorts its rows by seq: one lane of every clear gives the same digest.
    if plan_digest([Lane("", (), None, clears)]) != digest:
        raise _refused(path, "has clears that do not match its clears_digest")


def _clear(fields: dict[str, Any]) -> Clear:
    written = fields["token"]
    refs = tuple(_token_ref(text) for text in ([written] if isinstance(written, str) else written))
    return Clear(
        seq=fields["seq"],
        server=fields["server"],
        type_campaign=fields["type_campaign"],
        campaign_id=fields["campaign_id"],
        result=fields["result"],
        token=refs[0] if isinstance(written, str) else TokenPool(refs),
        on_failure=OnFailure(fields["on_failure"]),
        timeout_s=float(fields["timeout_s"]),
        retries=fields["retries"],
    )


def _token_ref(text: str) -> TokenRef:
    kind, _, name = text.partition(":")
    return TokenRef(kind, name)


def _where(instance_path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in instance_path)[1:] or "."


# --------------------------------------------------------------------------- writing


def _clear_fields(clear: Clear) -> dict[str, object]:
    return {
        "seq": clear.seq,
        "server": clear.server,
        "type_campaign": clear.type_campaign,
        "campaign_id": clear.campaign_id,
        "result": clear.result,
        # A pool is the list of its references.
        "token": str(clear.token)
        if isinstance(clear.token, TokenRef)
        else [str(ref) for ref in clear.token.refs],
        "on_failure": clear.on_failure.value,
        "retries": int(clear.retries),
        "timeout_s": float(clear.timeout_s),
    }


def _seqs(lane: Lane) -> list[int]:
    return [clear.seq for clear in lane.clears]


def _content_digest(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every field but ``digest``: layout does not count."""
    content = {key: value for key, value in document.items() if key != "digest"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def _render(document: dict[str, Any]) -> str:
    """Indented JSON, with each lane and each clear on a line of its own (for review and diff)."""
    parts = []
    for key, value in document.items():
        if key in ("lanes", "clears"):
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            text = f"[\n{items}\n  ]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _lane_change(before: tuple[LaneShape, ...], after: tuple[LaneShape, ...], plan: Plan) -> str:
    """The first reviewed lane that the tokens no longer make, and what they make of it."""
    now = _unordered(after, plan)
    for lane in before:
        if not _unordered((lane,), plan) <= now:
            tokens = set(lane[0])
            instead = next((other for other in after if tokens.intersection(other[0])), None)
            return f"reviewed {_lane_words(lane)}, now {_lane_words(instead)}"
    return "a lane the review does not have"


def _lane_words(lane: LaneShape | None) -> str:
    if lane is None:
        return "none"
    tokens, seqs = lane
    return f"{' and '.join(tokens)} with {len(seqs)} clear(s)"


def _refused(path: str, why: str) -> UsageError:
    return UsageError(f"{path} {why}; nothing was sent")
