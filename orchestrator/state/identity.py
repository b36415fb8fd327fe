"""What makes two runs "the same plan", so ``--resume`` can find the run to continue.

A run's identity is what its plan asks for: every clear, what it targets, how it
fails and retries, and which token *reference* it uses (an environment variable's
name, a file's path, as the plan writes them). Token values are not part of it,
in any form: an operator who rotates a rejected token and exports the new value
is still resuming the same run, which then sends with the new value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from orchestrator.plan.model import Clear, Lane

#: The version of the document hashed below; a new one gives every plan a new digest.
_DIGEST_VERSION = 2

_DIGEST_FIELDS = (
    "seq",
    "token",
    "server",
    "type_campaign",
    "campaign_id",
    "result",
    "on_failure",
    "retries",
    "timeout_s",
)


def _digest_row(clear: Clear) -> list[object]:
    # float()/int(): a plan saying "timeout_s: 90" and one saying "90.0" are the same plan.
    # on_failure is a StrEnum, which json writes as its plain value.
    return [
        clear.seq,
        str(clear.token),
        clear.server,
        clear.type_campaign,
        clear.campaign_id,
        clear.result_label,
        clear.on_failure,
        int(clear.retries),
        float(clear.timeout_s),
    ]


def plan_digest(lanes: Sequence[Lane]) -> str:
    """SHA-256 (hex) of a canonical JSON of the expanded clears, in ``seq`` order.

    Each clear contributes its seq, its token reference (``env:NAME`` or
    ``file:PATH``), server, type_campaign, campaign_id, result label,
    on_failure, retries and timeout_s. Token values and their fingerprints do
    not count, nor do tags, source lines or how clears are grouped into lanes.
    """
    rows = [_digest_row(clear) for lane in lanes for clear in lane.clears]
    rows.sort()  # seq leads each row and is unique: no key function needed
    document = {"v": _DIGEST_VERSION, "fields": _DIGEST_FIELDS, "clears": rows}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
