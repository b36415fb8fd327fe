"""What makes two runs "the same plan", so ``--resume`` can find the run to continue."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from orchestrator.plan.model import Clear, Lane


def _digest_row(clear: Clear, token_id: str) -> list[object]:
    # float()/int(): a plan saying "timeout_s: 90" and one saying "90.0" are the same plan.
    # on_failure is a StrEnum, which json writes as its plain value.
    return [
        clear.seq,
        token_id,
        clear.server,
        clear.type_campaign,
        clear.campaign_id,
        clear.result_label,
        clear.on_failure,
        int(clear.retries),
        float(clear.timeout_s),
    ]


_DIGEST_FIELDS = (
    "seq",
    "token_id",
    "server",
    "type_campaign",
    "campaign_id",
    "result",
    "on_failure",
    "retries",
    "timeout_s",
)


def plan_digest(lanes: Sequence[Lane]) -> str:
    """SHA-256 (hex) of a canonical JSON of the expanded clears, in ``seq`` order.

    Each clear contributes its seq, its lane's ``token_id``, server,
    type_campaign, campaign_id, result label, on_failure, retries and
    timeout_s; token values, token names, tags and source lines do not count,
    nor does how clears are grouped into lanes.
    """
    rows = [_digest_row(clear, lane.token_id) for lane in lanes for clear in lane.clears]
    rows.sort()  # seq leads each row and is unique: no key function needed
    document = {"v": 1, "fields": _DIGEST_FIELDS, "clears": rows}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
