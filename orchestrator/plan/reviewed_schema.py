"""The format of a reviewed file (``run --dry-run --save``), as a JSON Schema (draft 2020-12).

:mod:`orchestrator.plan.reviewed` writes it and checks a file against it once its
digest matched; what a schema cannot say (seqs in order, lanes holding each clear
once, the clears' identity) is checked there.
"""

from __future__ import annotations

from typing import Final

from orchestrator.plan.model import CAMPAIGN_TYPES, MAX_CLEARS, RESULT_FILTERS, OnFailure, Order
from orchestrator.plan.patterns import (
    BASE_URL_PATTERN,
    CAMPAIGN_ID_PATTERN,
    LOCK_URL_PATTERN,
    SERVER_PATTERN,
)
from orchestrator.plan.schema import MAX_MAINTENANCE_WAIT_S, MAX_SECONDS

__all__ = ["FORMAT", "SCHEMA"]

#: What the ``format`` field says; another value is refused.
FORMAT: Final = "orchestrator-reviewed-plan/1"

_TOKEN_PATTERN = r"^(?:env:[A-Za-z_][A-Za-z0-9_]*|file:[^\x00]+)$"

_CLEAR_SCHEMA: dict[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "seq",
        "server",
        "type_campaign",
        "campaign_id",
        "result",
        "token",
        "on_failure",
        "retries",
        "timeout_s",
    ],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "server": {"type": "string", "pattern": SERVER_PATTERN},
        "type_campaign": {"enum": list(CAMPAIGN_TYPES)},
        "campaign_id": {"type": "string", "pattern": CAMPAIGN_ID_PATTERN},
        "result": {"enum": [*RESULT_FILTERS, None]},
        "token": {
            "anyOf": [
                {"type": "string", "pattern": _TOKEN_PATTERN},
                {
                    "type": "array",
                    "minItems": 2,
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": _TOKEN_PATTERN},
                },
            ]
        },
        "on_failure": {"enum": [o.value for o in OnFailure]},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
    },
}

#: The whole format.
SCHEMA: Final[dict[str, object]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "format",
        "saved_at",
        "plan",
        "base_url",
        "simulated",
        "settings",
        "lanes",
        "clears",
        "clears_digest",
        "digest",
    ],
    "properties": {
        "format": {"const": FORMAT},
        "saved_at": {"type": "string"},
        "plan": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "sha256", "tags"],
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
        "base_url": {"type": "string", "pattern": BASE_URL_PATTERN},
        "simulated": {"type": "boolean"},
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "max_parallel_tokens",
                "cooldown_s",
                "maintenance_wait_s",
                "order",
                "lock_url",
            ],
            "properties": {
                "max_parallel_tokens": {"type": "integer", "minimum": 1, "maximum": 10_000},
                "cooldown_s": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
                "maintenance_wait_s": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_MAINTENANCE_WAIT_S,
                },
                "order": {"enum": [o.value for o in Order]},
                "lock_url": {
                    "anyOf": [{"type": "null"}, {"type": "string", "pattern": LOCK_URL_PATTERN}]
                },
            },
        },
        "lanes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["tokens", "seqs"],
                "properties": {
                    "tokens": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "pattern": _TOKEN_PATTERN},
                    },
                    "seqs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
        "clears": {"type": "array", "minItems": 1, "maxItems": MAX_CLEARS, "items": _CLEAR_SCHEMA},
        "clears_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
    },
}
