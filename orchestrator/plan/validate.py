"""Plan file → frozen :class:`~orchestrator.plan.model.Plan`, or a PlanError listing every problem.

The format is documented in ``docs/plan-format.md``. Every value is validated
from the text written in the file (see :mod:`orchestrator.plan.loader`), so what
is sent to wolkvox is exactly what the plan shows. Problems are collected in
one pass: a bad campaign does not hide the problems of the next one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from orchestrator.errors import PlanError, Problem
from orchestrator.plan import loader as yamlload
from orchestrator.plan.loader import Node, ScalarNode, join, line_of
from orchestrator.plan.model import (
    CAMPAIGN_TYPES,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_CLEARS,
    RESULT_FILTERS,
    Clear,
    OnFailure,
    Plan,
    Settings,
    TokenRef,
)

__all__ = ["check_base_url", "load_plan", "parse_plan"]

PLAN_VERSION: Final = "1"

#: The longest timeout_s and cooldown_s, in seconds.
MAX_SECONDS: Final = 3600.0

TOP_KEYS: Final = ("version", "settings", "defaults", "campaigns")
SETTINGS_KEYS: Final = ("max_parallel_tokens", "cooldown_s", "base_url", "protect", "lock_url")
CAMPAIGN_KEYS: Final = (
    "campaign_id",
    "results",
    "type_campaign",
    "server",
    "token_env",
    "token_file",
    "on_failure",
    "timeout_s",
    "retries",
    "tags",
)

#: The ``results`` text meaning "no filter: every record of the campaign".
ALL_RESULTS: Final = "all"

_RESULTS_EXPECTED: Final = f"{ALL_RESULTS!r} or a list of result filters"
_ON_FAILURE: Final = tuple(o.value for o in OnFailure)
_FILTERS: Final = frozenset(RESULT_FILTERS)
_CAMPAIGN_ID = re.compile(r"[0-9]{1,20}")
_SERVER = re.compile(r"[A-Za-z0-9]{1,32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
_PLACEHOLDER = "{server}"
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\s]")

_T = TypeVar("_T")


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate the plan file at ``path``; raise PlanError with every problem.

    Problems are reported against ``path`` as given; relative ``token_file``
    paths are resolved against the plan file's directory.
    """
    source = os.fspath(path)
    data = yamlload.read_file(path, source)
    return parse_plan(data, source, base_dir=Path(source).parent)


def parse_plan(text: str | bytes, source: str, *, base_dir: Path) -> Plan:
    """Validate plan text (bytes must be UTF-8); raise PlanError with every problem.

    ``source`` names the plan in problems; ``base_dir`` is where relative
    ``token_file`` paths start. Tokens are not read here.
    """
    with yamlload.gc_paused():
        # No reference to the node tree outlives this block: it is freed while
        # the collector is still paused, not scanned by its next pass.
        return _Validator(source, base_dir).plan(yamlload.compose(text, source))


def check_base_url(url: str) -> str | None:
    """Why ``url`` cannot be a wolkvox base URL, or ``None`` when it can.

    ``{server}`` (anywhere) is replaced by each clear's server; no other
    placeholder exists. A token never crosses a network in clear text: the
    scheme is https, or http to a loopback host only. No query, fragment or
    user info.
    """
    if not url:
        return "the base URL is empty"
    if _CONTROL_OR_SPACE.search(url):
        return f"{_shown(url)} contains spaces or control characters"
    rest = url.replace(_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        return f"{_shown(url)} has a placeholder other than {_PLACEHOLDER} (the only one there is)"
    if "?" in url or "#" in url:
        return f"{_shown(url)} must not have a query or a fragment"
    try:
        # Checked with a server in place: "{server}" itself is no valid host.
        parts = urlsplit(url.replace(_PLACEHOLDER, "0014"))
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{_shown(url)} has an invalid host or port"
    if "@" in parts.netloc:
        return f"{_shown(url)} must not carry user info (user:password@)"
    if not host:
        return f"{_shown(url)} has no host (expected e.g. https://wv{{server}}.wolkvox.com)"
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return None
    if parts.scheme == "http":
        return (
            f"{_shown(url)} would send the token in clear text: use https "
            "(http is only allowed to localhost, 127.0.0.0/8 or ::1)"
        )
    return f"{_shown(url)} must start with https://"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _hint(text: str, allowed: Collection[str]) -> str:
    """A "did you mean" for a near miss, else the list of what is allowed."""
    import difflib  # only for a plan with a mistake: start-up time counts

    # difflib is quadratic: a huge value is no typo of a short name anyway.
    close = difflib.get_close_matches(text, allowed, n=1) if len(text) <= 64 else []
    return f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(allowed)}"


@dataclass(slots=True)
class _Spec:
    """The campaign fields set so far: by defaults, then by one campaign entry.

    ``None`` means unset or invalid (the problem is already recorded).
    ``results`` holds ``None`` for "all".
    """

    campaign_id: str | None = None
    results: tuple[str | None, ...] | None = None
    type_campaign: str | None = None
    server: str | None = None
    token: TokenRef | None = None
    on_failure: OnFailure | None = None
    timeout_s: float | None = None
    retries: int | None = None
    tags: tuple[str, ...] | None = None

    def copy(self) -> _Spec:
        """A shallow copy, for one campaign to write over."""
        return _Spec(
            self.campaign_id,
            self.results,
            self.type_campaign,
            self.server,
            self.token,
            self.on_failure,
            self.timeout_s,
            self.retries,
            self.tags,
        )


#: A campaign entry without a problem: its target, results and token (never
#: None here), all its fields, and its line.
_Valid = tuple[tuple[str, str, str], tuple[str | None, ...], TokenRef, _Spec, int]


class _Validator:
    """One validation pass over one plan."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.read = yamlload.Reader(source)
        #: settings.protect, leading zeros stripped.
        self.protected: frozenset[str] = frozenset()
        #: Campaign entries without a problem, with their lines: expanded into
        #: clears only once the whole plan is known to be valid.
        self.valid: list[_Valid] = []
        self.planned = 0
        #: Each (server, type_campaign, campaign_id without leading zeros) cleared
        #: so far → the results each campaign entry clears there, with its
        #: campaign_id as written, its path and line.
        self.targets: dict[
            tuple[str, str, str], list[tuple[tuple[str | None, ...], str, str, int]]
        ] = {}
        self.token_files: dict[str, str] = {}

    def plan(self, root: Node | None) -> Plan:
        """The plan, or PlanError with every problem found."""
        if root is None or yamlload.kind(root) == "null":
            raise PlanError([Problem(self.source, None, "", "the plan is empty")])
        expected = "a mapping with version, settings, defaults and campaigns"
        top = self.read.entries(root, "", "", expected)
        if top is None:
            raise PlanError(self.read.problems)
        self._unknown_keys(top, "", TOP_KEYS)
        self._version(top, line_of(root))
        settings = self._settings(top["settings"][1]) if "settings" in top else Settings()
        defaults, default_keys = self._defaults(top.get("defaults"))
        if "campaigns" in top:
            self._campaigns(top["campaigns"][1], defaults, default_keys)
        else:
            self.problem(line_of(root), "", "missing required key 'campaigns'")
        if self.read.problems:
            raise PlanError(self.read.problems)
        return Plan(self.source, settings, self._expand())

    def problem(self, line: int | None, path: str, message: str) -> None:
        """Record a problem."""
        self.read.problem(line, path, message)

    def _unknown_keys(
        self, entries: dict[str, tuple[Node, Node]], path: str, allowed: Collection[str]
    ) -> None:
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                message = f"unknown key {_shown(key)} ({_hint(key, allowed)})"
                self.problem(line_of(key_node), path, message)

    def _version(self, top: dict[str, tuple[Node, Node]], line: int) -> None:
        if "version" not in top:
            self.problem(
                line, "", f"missing required key 'version' (write version: {PLAN_VERSION})"
            )
            return
        text = self.read.text(top["version"][1], "", "version", f"version {PLAN_VERSION}")
        if text is not None and text != PLAN_VERSION:
            message = f"unsupported plan format version {_shown(text)} (expected {PLAN_VERSION})"
            self.problem(line_of(top["version"][1]), "version", message)

    # --- settings -----------------------------------------------------------

    def _settings(self, node: Node) -> Settings:
        entries = self.read.entries(node, "", "settings", "a mapping of settings")
        if entries is None:
            return Settings()
        self._unknown_keys(entries, "settings", SETTINGS_KEYS)
        default = Settings()
        parent = "settings"
        max_parallel = self._optional(
            entries,
            "max_parallel_tokens",
            default.max_parallel_tokens,
            lambda n, k: self._whole(n, parent, k, 1, 10_000),
        )
        cooldown = self._optional(
            entries,
            "cooldown_s",
            default.cooldown_s,
            lambda n, k: self._seconds(n, parent, k, allow_zero=True),
        )
        base_url = self._optional(
            entries,
            "base_url",
            default.base_url,
            lambda n, k: self._url(n, parent, k, check_base_url),
        )
        protect = self._optional(entries, "protect", default.protect, self._protect)
        lock_url = self._optional(
            entries,
            "lock_url",
            default.lock_url,
            lambda n, k: self._url(n, parent, k, _check_lock_url),
        )
        return Settings(max_parallel, cooldown, base_url, protect, lock_url)

    def _optional(
        self,
        entries: dict[str, tuple[Node, Node]],
        key: str,
        default: _T,
        parse: Callable[[Node, str], _T | None],
    ) -> _T:
        if key not in entries:
            return default
        value = parse(entries[key][1], key)
        return default if value is None else value

    def _url(
        self, node: Node, parent: str, key: str, check: Callable[[str], str | None]
    ) -> str | None:
        text = self.read.text(node, parent, key, "a URL")
        if text is None:
            return None
        message = check(text)
        if message is not None:
            self.problem(line_of(node), join(parent, key), message)
            return None
        return text

    def _protect(self, node: Node, key: str) -> frozenset[str] | None:
        items = self.read.items(node, "settings", key, "a list of campaign ids")
        if items is None:
            return None
        parent = join("settings", key)
        ids = [self._campaign_id(item, parent, index) for index, item in enumerate(items)]
        protect = frozenset(i for i in ids if i is not None)
        # Matched ignoring leading zeros: wolkvox may read "0123" as 123, and
        # a protected campaign must not be cleared under another spelling.
        self.protected = frozenset(map(_id_key, protect))
        return protect

    # --- campaigns ----------------------------------------------------------

    def _defaults(self, pair: tuple[Node, Node] | None) -> tuple[_Spec, Collection[str]]:
        spec = _Spec()
        if pair is None:
            return spec, ()
        entries = self.read.entries(pair[1], "", "defaults", "a mapping of campaign fields")
        if entries is None:
            return spec, ()
        if "campaign_id" in entries:
            message = "campaign_id cannot have a default: each campaign names its own"
            self.problem(line_of(entries["campaign_id"][0]), "defaults", message)
            del entries["campaign_id"]
        self._fields(entries, "defaults", spec)
        return spec, entries.keys()

    def _campaigns(self, node: Node, defaults: _Spec, default_keys: Collection[str]) -> None:
        items = self.read.items(node, "", "campaigns", "a list of campaigns")
        if items is None:
            return
        if not items:
            self.problem(
                line_of(node), "campaigns", "the list is empty: a plan clears at least one campaign"
            )
        for index, item in enumerate(items):
            entries = self.read.entries(item, "campaigns", index, "a campaign (a mapping)")
            if entries is not None:
                self._campaign(
                    entries, f"campaigns[{index}]", line_of(item), defaults, default_keys
                )

    def _campaign(
        self,
        entries: dict[str, tuple[Node, Node]],
        path: str,
        line: int,
        defaults: _Spec,
        default_keys: Collection[str],
    ) -> None:
        problems_before = len(self.read.problems)
        spec = defaults.copy()
        self._fields(entries, path, spec)
        campaign_id, results, server = spec.campaign_id, spec.results, spec.server
        type_campaign, token = spec.type_campaign, spec.token
        if (
            campaign_id is None
            or results is None
            or type_campaign is None
            or server is None
            or token is None
        ):
            self._missing(spec, entries, default_keys, path, line)
        if results is not None:
            self.planned += len(results)
            if self.planned > MAX_CLEARS:
                message = f"the plan expands to more than {MAX_CLEARS} clears; split it up"
                self.problem(line, path, message)
                raise PlanError(self.read.problems)
        if campaign_id is not None and self.protected and _id_key(campaign_id) in self.protected:
            message = (
                f"campaign {campaign_id!r} is protected (settings.protect): no clear may touch it"
            )
            self.problem(line, join(path, "campaign_id"), message)
        if campaign_id is None or results is None or type_campaign is None or server is None:
            return
        target = (server, type_campaign, campaign_id)
        self._duplicates(target, results, path, line)
        if token is not None and len(self.read.problems) == problems_before:
            self.valid.append((target, results, token, spec, line))

    def _expand(self) -> tuple[Clear, ...]:
        """One clear per result of each campaign entry, numbered across the plan."""
        clears: list[Clear] = []
        append = clears.append
        for (server, type_campaign, campaign_id), results, token, spec, line in self.valid:
            on_failure = spec.on_failure or OnFailure.STOP
            timeout_s = DEFAULT_TIMEOUT_S if spec.timeout_s is None else spec.timeout_s
            retries = DEFAULT_RETRIES if spec.retries is None else spec.retries
            tags = spec.tags or ()
            for result in results:
                append(
                    Clear(
                        len(clears) + 1,
                        server,
                        type_campaign,
                        campaign_id,
                        result,
                        token,
                        on_failure,
                        timeout_s,
                        retries,
                        tags,
                        line,
                    )
                )
        return tuple(clears)

    def _missing(
        self,
        spec: _Spec,
        entries: Collection[str],
        default_keys: Collection[str],
        path: str,
        line: int,
    ) -> None:
        # An absent field is reported here; a written but invalid one already was.
        if spec.campaign_id is None and "campaign_id" not in entries:
            self.problem(line, path, "missing required key 'campaign_id'")
        for key, value in (
            ("results", spec.results),
            ("type_campaign", spec.type_campaign),
            ("server", spec.server),
        ):
            if value is None and key not in entries and key not in default_keys:
                message = f"missing required key {key!r} (set it here or in defaults)"
                self.problem(line, path, message)
        if spec.token is None and not any(
            key in entries or key in default_keys for key in ("token_env", "token_file")
        ):
            message = "missing a token: set token_env or token_file here or in defaults"
            self.problem(line, path, message)

    def _duplicates(
        self, target: tuple[str, str, str], results: tuple[str | None, ...], path: str, line: int
    ) -> None:
        # The identity protect uses: 3001 and 03001 are one campaign to wolkvox.
        server, type_campaign, campaign_id = target
        identity = (server, type_campaign, _id_key(campaign_id))
        earlier = self.targets.get(identity)
        if earlier is None:
            self.targets[identity] = [(results, campaign_id, path, line)]
            return
        for result in results:
            for their_results, their_id, their_path, their_line in earlier:
                if result in their_results or result is None or None in their_results:
                    there = f"{their_path} at line {their_line}"
                    if their_id != campaign_id:
                        there += f", written {their_id!r}"
                    self._duplicate(target, result, their_results, there, path, line)
                    return
        earlier.append((results, campaign_id, path, line))

    def _duplicate(
        self,
        target: tuple[str, str, str],
        result: str | None,
        their_results: tuple[str | None, ...],
        there: str,
        path: str,
        line: int,
    ) -> None:
        server, type_campaign, campaign_id = target
        what = f"campaign {campaign_id!r} on server {server!r} ({type_campaign})"
        if result in their_results:
            label = ALL_RESULTS if result is None else result
            message = f"duplicate clear: {what}, result {label!r}, is already cleared by {there}"
        else:
            message = (
                f"duplicate clear: {what} is cleared both with {ALL_RESULTS!r} and with a "
                f"result filter (see {there}); {ALL_RESULTS!r} already deletes every record"
            )
        self.problem(line, join(path, "results"), message)

    def _fields(self, entries: dict[str, tuple[Node, Node]], path: str, spec: _Spec) -> None:
        """Write the campaign fields of ``entries`` over ``spec``, reporting each problem."""
        for key, (key_node, node) in entries.items():
            match key:
                case "campaign_id":
                    spec.campaign_id = self._campaign_id(node, path, key)
                case "results":
                    spec.results = self._results(node, path)
                case "type_campaign":
                    spec.type_campaign = self._choice(
                        node, path, key, CAMPAIGN_TYPES, "a campaign type"
                    )
                case "server":
                    spec.server = self._pattern(
                        node, path, key, _SERVER, "a server (1 to 32 letters and digits)"
                    )
                case "token_env" | "token_file":
                    spec.token = self._token(node, path, key)
                case "on_failure":
                    choice = self._choice(node, path, key, _ON_FAILURE, "an on_failure action")
                    spec.on_failure = None if choice is None else OnFailure(choice)
                case "timeout_s":
                    spec.timeout_s = self._seconds(node, path, key, allow_zero=False)
                case "retries":
                    spec.retries = self._whole(node, path, key, 0, 10)
                case "tags":
                    spec.tags = self._tags(node, path)
                case _:
                    message = f"unknown key {_shown(key)} ({_hint(key, CAMPAIGN_KEYS)})"
                    self.problem(line_of(key_node), path, message)
        if "token_env" in entries and "token_file" in entries:
            line = line_of(entries["token_file"][0])
            self.problem(line, path, "set token_env or token_file, not both")
            spec.token = None

    # --- field values -------------------------------------------------------

    def _campaign_id(self, node: Node, parent: str, key: str | int) -> str | None:
        return self._pattern(node, parent, key, _CAMPAIGN_ID, "a campaign id (1 to 20 digits)")

    def _pattern(
        self, node: Node, parent: str, key: str | int, pattern: re.Pattern[str], expected: str
    ) -> str | None:
        text = self.read.text(node, parent, key, expected)
        if text is None or pattern.fullmatch(text):
            return text
        self.problem(line_of(node), join(parent, key), f"expected {expected}, got {_shown(text)}")
        return None

    def _choice(
        self, node: Node, parent: str, key: str, allowed: tuple[str, ...], what: str
    ) -> str | None:
        text = self.read.text(node, parent, key, what)
        if text is None or text in allowed:
            return text
        message = f"{_shown(text)} is not {what} ({_hint(text, allowed)})"
        self.problem(line_of(node), join(parent, key), message)
        return None

    def _whole(self, node: Node, parent: str, key: str, low: int, high: int) -> int | None:
        expected = f"a whole number from {low} to {high}"
        text = self.read.text(node, parent, key, expected)
        if text is None:
            return None
        if _WHOLE.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        self.problem(line_of(node), join(parent, key), f"expected {expected}, got {_shown(text)}")
        return None

    def _seconds(self, node: Node, parent: str, key: str, *, allow_zero: bool) -> float | None:
        low = "from 0 to" if allow_zero else "above 0 and at most"
        expected = f"a number of seconds {low} {MAX_SECONDS:g}"
        text = self.read.text(node, parent, key, expected)
        if text is None:
            return None
        if _DECIMAL.fullmatch(text):
            value = float(text)
            if (value > 0 or allow_zero) and value <= MAX_SECONDS:
                return value
        self.problem(line_of(node), join(parent, key), f"expected {expected}, got {_shown(text)}")
        return None

    def _token(self, node: Node, parent: str, key: str) -> TokenRef | None:
        if key == "token_env":
            name = self._pattern(node, parent, key, _ENV_NAME, "an environment variable name")
            return None if name is None else TokenRef("env", name)
        text = self.read.text(node, parent, key, "a file path")
        if text is None:
            return None
        if "\0" in text:
            self.problem(
                line_of(node), join(parent, key), "a file path cannot contain a NUL character"
            )
            return None
        if text not in self.token_files:
            self.token_files[text] = os.path.realpath(self.base_dir / text)
        return TokenRef("file", self.token_files[text])

    def _results(self, node: Node, parent: str) -> tuple[str | None, ...] | None:
        if type(node) is ScalarNode:
            text = self.read.text(node, parent, "results", _RESULTS_EXPECTED)
            if text == ALL_RESULTS:
                return (None,)
            if text is not None:
                hint = f" (for one filter write [{text}])" if text in _FILTERS else ""
                message = f"expected {_RESULTS_EXPECTED}, got {_shown(text)}{hint}"
                self.problem(line_of(node), join(parent, "results"), message)
            return None
        items = self.read.items(node, parent, "results", _RESULTS_EXPECTED)
        if items is None:
            return None
        path = parent + ".results"
        if not items:
            message = (
                f"the list is empty: name at least one filter, or write results: {ALL_RESULTS}"
            )
            self.problem(line_of(node), path, message)
            return None
        texts = self.read.texts(items, path, "a result filter")
        if _FILTERS.issuperset(texts) and len(set(texts)) == len(texts):
            return tuple(texts)
        self._bad_filters(items, texts, path)
        return None

    def _bad_filters(self, items: list[Node], texts: list[str | None], path: str) -> None:
        first: dict[str, int] = {}
        for index, text in enumerate(texts):
            where = join(path, index)
            if text is None:
                continue
            if text == ALL_RESULTS:
                message = f"{ALL_RESULTS!r} cannot be in a list: write results: {ALL_RESULTS}"
            elif text not in _FILTERS:
                message = f"{_shown(text)} is not a result filter ({_hint(text, RESULT_FILTERS)})"
            elif text in first:
                message = f"duplicate result filter {text!r} (also {path}[{first[text]}])"
            else:
                first[text] = index
                continue
            self.problem(line_of(items[index]), where, message)

    def _tags(self, node: Node, parent: str) -> tuple[str, ...] | None:
        items = self.read.items(node, parent, "tags", "a list of tags")
        if items is None:
            return None
        path = join(parent, "tags")
        texts = self.read.texts(items, path, "a tag")
        tags = tuple(filter(None, texts))
        if len(tags) == len(texts):
            return tags
        for index, text in enumerate(texts):
            if text == "":
                self.problem(line_of(items[index]), join(path, index), "a tag cannot be empty")
        return None


def _check_lock_url(url: str) -> str | None:
    """Why ``url`` cannot be the shared lock URL, or ``None`` when it can."""
    if _CONTROL_OR_SPACE.search(url):
        return f"{_shown(url)} contains spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{_shown(url)} has an invalid host or port"
    if parts.scheme not in ("redis", "rediss"):
        return f"{_shown(url)} is not a redis:// or rediss:// URL"
    return None if host else f"{_shown(url)} has no host"


def _id_key(campaign_id: str) -> str:
    return campaign_id.lstrip("0") or "0"
