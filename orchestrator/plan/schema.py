"""The JSON Schema of a plan (draft 2020-12): the one place the plan's rules are written.

:func:`plan_schema` is what ``orchestrator validate`` checks a plan against
(:mod:`orchestrator.plan.validate`, which adds only what a schema cannot say),
and what editors read. It is written for the way an editor sees a plan too:
the yaml-language-server (VS Code, Neovim, Helix...) reads YAML 1.2 and types
plain scalars, so ``server: 0014`` reaches the schema as the integer 14, while
orchestrator's loader hands it the text ``"0014"``. Fields read as digits
therefore accept an integer as well as a string, and a string that spells a
number is held to the exact rules (range included) by its pattern.

Each part's ``title`` names what is expected, in the words problems use
("expected a campaign id (1 to 20 digits), got '1:20'"). What a schema cannot
check is listed in the top-level description. ``docs/plan-v1.schema.json`` is
generated from this module (``orchestrator schema``); plans point at it with
a first line ``# yaml-language-server: $schema=../docs/plan-v1.schema.json``.

Every ``pattern`` is written ``^(?:...)$`` in the common subset of ECMA-262
(what JSON Schema specifies) and Python regular expressions.
"""

from __future__ import annotations

import json
from typing import Final

from orchestrator.plan.model import (
    ALL,
    CAMPAIGN_TYPES,
    DEFAULT_BASE_URL,
    DEFAULT_COOLDOWN_S,
    DEFAULT_MAINTENANCE_WAIT_S,
    DEFAULT_MAX_PARALLEL_TOKENS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_CLEARS,
    RESULT_FILTERS,
    OnFailure,
    Order,
)
from orchestrator.plan.patterns import (
    BASE_URL_PATTERN,
    CAMPAIGN_ID_PATTERN,
    COOLDOWN_PATTERN,
    ENV_NAME_PATTERN,
    FILE_PATH_PATTERN,
    LOCK_URL_PATTERN,
    MAINTENANCE_WAIT_PATTERN,
    MAX_PARALLEL_PATTERN,
    RETRIES_PATTERN,
    SERVER_PATTERN,
    TIMEOUT_PATTERN,
)

__all__ = [
    "MAX_MAINTENANCE_WAIT_S",
    "MAX_SECONDS",
    "PLAN_VERSION",
    "SCHEMA_FILE",
    "SCHEMA_ID",
    "plan_schema",
    "render_schema",
]

PLAN_VERSION: Final = "1"

#: The longest timeout_s and cooldown_s, in seconds.
MAX_SECONDS: Final = 3600.0
#: The longest maintenance_wait_s, in seconds: a day.
MAX_MAINTENANCE_WAIT_S: Final = 86400.0

#: Where the schema says it lives.
SCHEMA_ID: Final = "https://github.com/orchestrator/orchestrator/plan-v1.schema.json"

#: The committed copy, relative to the repository root (plans/ point at it).
SCHEMA_FILE: Final = "docs/plan-v1.schema.json"

Schema = dict[str, object]

#: The largest campaign id of 20 digits, for ids an editor reads as integers.
_MAX_CAMPAIGN_ID = 10**20 - 1


# --- building blocks ------------------------------------------------------------


def _text_or_integer(
    title: str,
    description: str,
    pattern: str,
    maximum: int,
    *,
    minimum: int = 0,
    default: object = None,
) -> Schema:
    """A value the loader reads as digits: the text, or the integer an editor sees."""
    schema: Schema = {
        "title": title,
        "description": description,
        "anyOf": [
            {"type": "string", "pattern": pattern},
            {"type": "integer", "minimum": minimum, "maximum": maximum},
        ],
    }
    if default is not None:
        schema["default"] = default
    return schema


def _seconds(
    description: str,
    pattern: str,
    *,
    allow_zero: bool,
    default: float,
    maximum: float = MAX_SECONDS,
) -> Schema:
    number: Schema = {"type": "number", "maximum": _number(maximum)}
    number |= {"minimum": 0} if allow_zero else {"exclusiveMinimum": 0}
    low = "from 0 to" if allow_zero else "above 0 and at most"
    return {
        "title": f"a number of seconds {low} {maximum:g}",
        "description": description,
        "anyOf": [{"type": "string", "pattern": pattern}, number],
        "default": _number(default),
    }


def _number(value: float) -> int | float:
    """``60.0`` as ``60``: the JSON a reader expects for a whole default."""
    return int(value) if value.is_integer() else value


_ANY_TEXT = "any text (a number or true/false is read as the text written)"


def _campaign_id(description: str) -> Schema:
    return _text_or_integer(
        "a campaign id (1 to 20 digits)", description, CAMPAIGN_ID_PATTERN, _MAX_CAMPAIGN_ID
    )


# --- the parts of a plan ------------------------------------------------------------


def _settings() -> Schema:
    return {
        "title": "a mapping of settings",
        "description": "Run-wide settings. Every key is optional.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_parallel_tokens": _text_or_integer(
                "a whole number from 1 to 10000",
                "How many tokens (lanes) run at once: a whole number from 1 to 10000.",
                MAX_PARALLEL_PATTERN,
                10_000,
                minimum=1,
                default=DEFAULT_MAX_PARALLEL_TOKENS,
            ),
            "cooldown_s": _seconds(
                "Seconds a token rests after a call timed out, before it is used again "
                f"(wolkvox may still be working on it): from 0 to {MAX_SECONDS:g}, "
                "plain digits with an optional decimal fraction.",
                COOLDOWN_PATTERN,
                allow_zero=True,
                default=DEFAULT_COOLDOWN_S,
            ),
            "maintenance_wait_s": _seconds(
                "Seconds a lane keeps trying while wolkvox answers that it is under "
                "maintenance (403), waiting about 1, 2, 4, then 5 minutes between calls; "
                "then the clear fails with reason maintenance. Those calls do not count "
                f"against retries. From 0 to {MAX_MAINTENANCE_WAIT_S:g}, plain digits with "
                "an optional decimal fraction.",
                MAINTENANCE_WAIT_PATTERN,
                allow_zero=True,
                default=DEFAULT_MAINTENANCE_WAIT_S,
                maximum=MAX_MAINTENANCE_WAIT_S,
            ),
            "base_url": {
                "title": "a URL",
                "description": (
                    "URL template of the wolkvox API; {server} is replaced by each clear's "
                    "server (anywhere in the URL, or nowhere). https, or http to a loopback "
                    "host only (localhost, 127.0.0.0/8, ::1), so a token never crosses a "
                    "network in clear text. No query, fragment, user info, spaces or other "
                    "placeholder."
                ),
                "type": "string",
                "pattern": BASE_URL_PATTERN,
                "default": DEFAULT_BASE_URL,
                "examples": [DEFAULT_BASE_URL, "http://127.0.0.1:8080/wv{server}"],
            },
            "protect": {
                "title": "a list of campaign ids",
                "description": (
                    "Campaign ids no clear may touch, on any server, of any type: a plan "
                    "that clears one is refused. Compared ignoring leading zeros. (Checked "
                    "by orchestrator validate, not by this schema.)"
                ),
                "type": "array",
                "items": _campaign_id("A protected campaign id: 1 to 20 digits."),
            },
            "lock_url": {
                "title": "a URL",
                "description": (
                    "redis:// or rediss:// URL of the shared token locks, for runs on "
                    "several hosts; without it, token locks are local files."
                ),
                "type": "string",
                "pattern": LOCK_URL_PATTERN,
                "examples": ["redis://127.0.0.1:6379/0"],
            },
            "order": {
                "title": "an order",
                "description": (
                    "In which order the campaigns of a pool start, and the lanes when "
                    "there are more tokens than max_parallel_tokens: longest_first (the "
                    "longest expected first, from the journal's last durations, so the "
                    "run ends sooner) or plan (as written)."
                ),
                "enum": [o.value for o in Order],
                "default": Order.LONGEST_FIRST.value,
            },
        },
    }


def _campaign_fields() -> dict[str, Schema]:
    """Every campaign field except ``campaign_id`` (the ones ``defaults`` may set)."""
    filters = list(RESULT_FILTERS)
    return {
        "results": {
            "title": f"{ALL!r} or a list of result filters",
            "description": (
                f"Which records to delete: {ALL!r} (one call without a filter: "
                "every record of the campaign), or a list of result filters (one call "
                "per filter, in the order written). A single filter needs brackets: "
                "[busy]. Required here or in defaults."
            ),
            "anyOf": [
                {
                    "const": ALL,
                    "description": "Every record of the campaign: one unfiltered call.",
                },
                {
                    "description": "One clear per filter; each filter once, at least one.",
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {
                        "title": "a result filter",
                        "description": "A wolkvox result filter.",
                        "enum": filters,
                    },
                },
            ],
            "examples": [ALL, ["no-answer", "busy", "abandon"]],
        },
        "type_campaign": {
            "title": "a campaign type",
            "description": "The wolkvox campaign type. Required here or in defaults.",
            "enum": list(CAMPAIGN_TYPES),
        },
        "server": {
            "title": "a server (1 to 32 letters and digits)",
            "description": (
                "The wolkvox server code, e.g. 0014: 1 to 32 letters and digits, sent "
                "exactly as written (leading zeros kept). Required here or in defaults."
            ),
            "anyOf": [
                {"type": "string", "pattern": SERVER_PATTERN},
                # An editor reads a plain 0014 as the integer 14; the loader, as "0014".
                {"type": "integer", "minimum": 0, "maximum": 10**32 - 1},
            ],
            "examples": ["0014"],
        },
        "token_env": {
            "title": "an environment variable name",
            "description": (
                "Name of the environment variable holding the token, read when a run "
                "starts; or a list of names: a pool of tokens of one operation, whichever "
                "is free taking the next campaign. Exactly one token source (token_env "
                "or token_file) per campaign, here or in defaults; a campaign's own "
                "replaces the default."
            ),
            "anyOf": [
                {"type": "string", "pattern": ENV_NAME_PATTERN},
                {
                    "title": "a pool: a list of environment variable names",
                    "description": "A pool of tokens; each name once, at least one.",
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {
                        "title": "an environment variable name",
                        "description": "Name of an environment variable holding a token.",
                        "type": "string",
                        "pattern": ENV_NAME_PATTERN,
                    },
                },
            ],
            "examples": ["WOLKVOX_TOKEN", ["WV_OPS_1", "WV_OPS_2"]],
        },
        "token_file": {
            "title": "a file path",
            "description": (
                "File holding the token (a mounted secret, say), relative to the plan "
                "file's directory; ~ is not expanded; or a list of files: a pool of tokens "
                "of one operation. Exactly one token source (token_env or token_file) per "
                "campaign, here or in defaults; a campaign's own replaces the default. "
                f"Text: {_ANY_TEXT}, no NUL."
            ),
            "anyOf": [
                {"type": "string", "pattern": FILE_PATH_PATTERN},
                {"type": ["number", "boolean"]},
                {
                    "title": "a pool: a list of file paths",
                    "description": "A pool of tokens; each file once, at least one.",
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {
                        "title": "a file path",
                        "description": "File holding a token.",
                        "anyOf": [
                            {"type": "string", "pattern": FILE_PATH_PATTERN},
                            {"type": ["number", "boolean"]},
                        ],
                    },
                },
            ],
        },
        "on_failure": {
            "title": "an on_failure action",
            "description": (
                "What happens after this campaign's clear fails: stop (skip the rest of "
                "this token's clears; in a pool, the rest of this campaign's), continue "
                "(go on with them) or abort (start nothing new anywhere). A rejected "
                "token or spent quota always stops its lane; in a pool, the token leaves "
                "the pool and its campaign carries on with another token."
            ),
            "enum": [o.value for o in OnFailure],
            "default": OnFailure.STOP.value,
        },
        "timeout_s": _seconds(
            f"Seconds one call may take: above 0 and at most {MAX_SECONDS:g}, plain "
            "digits with an optional decimal fraction.",
            TIMEOUT_PATTERN,
            allow_zero=False,
            default=DEFAULT_TIMEOUT_S,
        ),
        "retries": _text_or_integer(
            "a whole number from 0 to 10",
            "Further attempts after a retryable answer (timeout, 5xx, 429, token busy): "
            "a whole number from 0 to 10. Each attempt spends one call of the token's "
            "daily quota.",
            RETRIES_PATTERN,
            10,
            default=DEFAULT_RETRIES,
        ),
        "tags": {
            "title": "a list of tags",
            "description": (
                "Labels for --tag (run or validate only campaigns carrying a tag). A "
                "campaign's tags replace the defaults' tags."
            ),
            "type": "array",
            "items": {
                "title": "a tag",
                "description": f"A tag: {_ANY_TEXT}, not empty.",
                "anyOf": [{"type": "string", "minLength": 1}, {"type": ["number", "boolean"]}],
            },
            "examples": [["nightly"]],
        },
    }


def _one_token_source() -> Schema:
    # Only where token_env is written: "not required" alone would refuse a null.
    return {"dependentSchemas": {"token_env": {"not": {"required": ["token_file"]}}}}


def _has(key: str) -> Schema:
    """The condition "the plan has defaults, and they set ``key``"."""
    return {"required": ["defaults"], "properties": {"defaults": {"required": [key]}}}


def _each_campaign(rule: Schema) -> Schema:
    return {"properties": {"campaigns": {"items": rule}}}


def _required_here_or_in_defaults() -> list[Schema]:
    """What each campaign needs unless the defaults give it."""
    rules: list[Schema] = [
        {"if": _has(key), "else": _each_campaign({"required": [key]})}
        for key in ("results", "type_campaign", "server")
    ]
    token: Schema = {"anyOf": [{"required": ["token_env"]}, {"required": ["token_file"]}]}
    has_token: Schema = {"anyOf": [_has("token_env"), _has("token_file")]}
    rules.append({"if": has_token, "else": _each_campaign(token)})
    return rules


_CANNOT_CHECK = (
    "What this schema cannot check, and `orchestrator validate` does: the same "
    "clear twice (same server, type_campaign, campaign_id ignoring leading zeros "
    "and result, or 'all' beside a filter) across campaign entries; settings.protect against the "
    "campaign ids; a token variable or file in two pools, or one file twice in a pool; "
    f"at most {MAX_CLEARS} clears after expansion; duplicate keys, "
    "non-standard tags, a second YAML document; numbers spelled other than plain "
    "digits (+5, 0x1F, 0o17, 1e3, .5, 3.0) where an editor reads them as numbers; "
    "every corner of base_url and lock_url."
)


def plan_schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of a version 1 plan, as a fresh dict."""
    fields = _campaign_fields()
    defaults: Schema = {
        "title": "a mapping of campaign fields",
        "description": (
            "Any campaign field except campaign_id; each campaign starts from these and "
            "a field it writes replaces the default entirely (lists are not merged)."
        ),
        "type": "object",
        "additionalProperties": False,
        "properties": dict(fields),
        **_one_token_source(),
    }
    campaign: Schema = {
        "title": "a campaign (a mapping)",
        "description": (
            "One campaign to clear: one call per result filter, or one for 'all'. "
            "Needs campaign_id, and results, type_campaign, server and a token source "
            "here or in defaults."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["campaign_id"],
        "properties": {
            "campaign_id": _campaign_id(
                "The wolkvox campaign id: 1 to 20 digits, sent exactly as written "
                "(leading zeros kept). Not allowed in defaults."
            ),
            **fields,
        },
        **_one_token_source(),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "orchestrator plan, version 1",
        "description": (
            "A plan of wolkvox dialer campaigns whose records orchestrator deletes with "
            "the clear_campaign API. Every value is read as the text written: "
            "server: 0014 is sent as 0014. See docs/plan-format.md. " + _CANNOT_CHECK
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "campaigns"],
        "properties": {
            "version": {
                "title": f"version {PLAN_VERSION}",
                "description": "The plan format version: 1.",
                "enum": [int(PLAN_VERSION), PLAN_VERSION],
            },
            "settings": _settings(),
            "defaults": defaults,
            "campaigns": {
                "title": "a list of campaigns",
                "description": "The campaigns to clear, in order; at least one.",
                "type": "array",
                "minItems": 1,
                "items": campaign,
            },
        },
        "allOf": _required_here_or_in_defaults(),
    }


def render_schema() -> str:
    """The schema as ``orchestrator schema`` prints it and ``docs/`` keeps it."""
    return json.dumps(plan_schema(), indent=2) + "\n"


if __name__ == "__main__":  # pragma: no cover - python -m orchestrator.plan.schema > docs/...
    print(render_schema(), end="")
