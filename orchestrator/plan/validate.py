"""Plan file → frozen :class:`~orchestrator.plan.model.Plan`, or a PlanError listing every problem.

The format is documented in ``docs/plan-format.md``. The YAML is read as the
text written (:mod:`orchestrator.plan.loader`), then checked against the
plan's JSON Schema (:mod:`orchestrator.plan.schema`, the one place its rules
are written) and worded by :mod:`orchestrator.plan.schema_errors`. This
module adds what a schema cannot say: a clear written twice, a protected
campaign, the size of the expanded plan, the corners of a URL. Problems are
collected in one pass: a bad campaign does not hide the problems of the next.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import re
from functools import cache
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import jsonschema_rs

from orchestrator.errors import PlanError, Problem
from orchestrator.plan import loader
from orchestrator.plan.loader import Data, Node, line_of, node_at
from orchestrator.plan.model import (
    ALL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_CLEARS,
    Clear,
    OnFailure,
    Order,
    Plan,
    Settings,
    TokenPool,
    TokenRef,
    campaign_key,
)
from orchestrator.plan.schema import plan_schema
from orchestrator.plan.schema_errors import Finding, explain, shown
from orchestrator.plan.schema_errors import Path as DataPath

__all__ = ["check_base_url", "load_plan", "parse_plan"]

_PLACEHOLDER = "{server}"
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_TOKEN_KEYS: Final = ("token_env", "token_file")


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate the plan file at ``path``; raise PlanError with every problem.

    Problems are reported against ``path`` as given; relative ``token_file``
    paths are resolved against the plan file's directory.
    """
    source = os.fspath(path)
    data = loader.read_file(path, source)
    return parse_plan(data, source, base_dir=Path(source).parent)


def parse_plan(text: str | bytes, source: str, *, base_dir: Path) -> Plan:
    """Validate plan text (bytes must be UTF-8); raise PlanError with every problem.

    ``source`` names the plan in problems; ``base_dir`` is where relative
    ``token_file`` paths start. Tokens are not read here.
    """
    # A large plan makes hundreds of thousands of objects that all live until
    # the end; the cyclic collector would rescan them again and again as they
    # grow. None of them forms a cycle, so it waits until the plan is made.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        root = loader.compose(text, source)
        if root is None or loader.kind(root) == "null":
            raise PlanError([Problem(source, None, "", "the plan is empty")])
        reader = loader.Reader(source)
        data = reader.data(root)
        check = _Check(reader)
        check.against_schema(data, root)
        lines = _campaign_lines(root)
        # The node tree is by far the largest part of a plan in memory; past
        # this point only the campaigns' lines are needed from it.
        del root
        return check.plan(data, lines, base_dir)
    finally:
        if was_enabled:
            gc.enable()


@cache
def _validator() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(plan_schema())


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
        return f"{shown(url)} contains spaces or control characters"
    rest = url.replace(_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        return f"{shown(url)} has a placeholder other than {_PLACEHOLDER} (the only one there is)"
    if "?" in url or "#" in url:
        return f"{shown(url)} must not have a query or a fragment"
    try:
        # Checked with a server in place: "{server}" itself is no valid host.
        parts = urlsplit(url.replace(_PLACEHOLDER, "0014"))
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{shown(url)} has an invalid host or port"
    if "@" in parts.netloc:
        return f"{shown(url)} must not carry user info (user:password@)"
    if not host:
        return f"{shown(url)} has no host (expected e.g. https://wv{{server}}.wolkvox.com)"
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return None
    if parts.scheme == "http":
        return (
            f"{shown(url)} would send the token in clear text: use https "
            "(http is only allowed to localhost, 127.0.0.0/8 or ::1)"
        )
    return f"{shown(url)} must start with https://"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Check:
    """One validation pass over one plan read as data."""

    def __init__(self, reader: loader.Reader) -> None:
        #: Holds every problem, those of reading the YAML first.
        self.reader = reader
        self.source = reader.source
        self.problems = reader.problems
        #: Paths with a problem, and every path above one: what lies at, above
        #: or below them is not checked further.
        self.faulty: set[DataPath] = set()
        self.above_faulty: set[DataPath] = set()
        #: Where reading the YAML found a problem: the schema's view of the
        #: value left there (None, a missing key) would only repeat it.
        self.read_faults = {problem.path for problem in reader.problems}

    def against_schema(self, data: Data, root: Node) -> None:
        """Record what the schema, and the code's own URL checks, find wrong."""
        schema = plan_schema()
        for error in _validator().iter_errors(data):
            for finding in explain(error, schema, root, self._url_worded):
                if finding.where in self.read_faults:
                    self._mark(finding.path)
                else:
                    self.add(finding)
        settings = data.get("settings") if isinstance(data, dict) else None
        if not isinstance(settings, dict):
            return
        for key, check in (("base_url", check_base_url), ("lock_url", _check_lock_url)):
            url = settings.get(key)
            why = check(url) if isinstance(url, str) else None
            if why is not None:
                line = line_of(node_at(root, ("settings", key))[1])
                self.add(Finding(("settings", key), why, line))

    def plan(self, data: Data, lines: list[int], base_dir: Path) -> Plan:
        """The plan, or PlanError with every problem found.

        ``lines`` holds the line of each campaign entry.
        """
        if not isinstance(data, dict):
            raise PlanError(self.problems)
        settings = self._settings(data.get("settings"))
        clears = self._clears(data, settings.protect, lines, base_dir)
        if self.problems:
            raise PlanError(self.problems)
        return Plan(self.source, settings, clears)

    def add(self, finding: Finding) -> None:
        """Record a problem; past :data:`~orchestrator.plan.loader.MAX_PROBLEMS`, stop."""
        self._mark(finding.path)
        self.reader.problem(finding.line, finding.where, finding.message)

    def _url_worded(self, path: DataPath, url: str) -> bool:
        """Whether the code's own URL check refuses ``url`` (and so words it)."""
        check = check_base_url if path[-1] == "base_url" else _check_lock_url
        return check(url) is not None

    def _clean(self, *path: str | int) -> bool:
        """No problem was found at ``path``, above it or below it."""
        above = any(path[:depth] in self.faulty for depth in range(1, len(path) + 1))
        return not above and path not in self.above_faulty

    def _mark(self, path: DataPath) -> None:
        if path:  # a problem of the whole plan leaves its parts to be checked
            self.faulty.add(path)
            self.above_faulty.update(path[:depth] for depth in range(1, len(path)))

    # --- settings -------------------------------------------------------------

    def _settings(self, data: Data) -> Settings:
        default = Settings()
        if not isinstance(data, dict) or not self._clean("settings"):
            return default
        protect = data.get("protect")
        return Settings(
            max_parallel_tokens=int(
                _text(data, "max_parallel_tokens", default.max_parallel_tokens)
            ),
            cooldown_s=float(_text(data, "cooldown_s", default.cooldown_s)),
            base_url=_text(data, "base_url", default.base_url),
            protect=frozenset(p for p in protect if isinstance(p, str))
            if isinstance(protect, list)
            else default.protect,
            lock_url=_optional_text(data, "lock_url"),
            maintenance_wait_s=float(_text(data, "maintenance_wait_s", default.maintenance_wait_s)),
            order=Order(_text(data, "order", default.order.value)),
        )

    # --- campaigns ------------------------------------------------------------

    def _clears(
        self, data: dict[str, Data], protect: frozenset[str], lines: list[int], base_dir: Path
    ) -> tuple[Clear, ...]:
        campaigns = data.get("campaigns")
        defaults = data.get("defaults")
        if not isinstance(campaigns, list) or not self._clean("defaults"):
            return ()
        protected = frozenset(map(campaign_key, protect))
        first = _First()
        token_files: dict[str, str] = {}
        pools = _Pools()
        clears: list[Clear] = []
        for index, entry in enumerate(campaigns):
            if not isinstance(entry, dict) or not self._clean("campaigns", index):
                continue
            fields = _with_defaults(entry, defaults if isinstance(defaults, dict) else {})
            line = lines[index]
            path: DataPath = ("campaigns", index)
            campaign_id = str(fields["campaign_id"])
            if campaign_key(campaign_id) in protected:
                message = (
                    f"campaign {campaign_id!r} is protected (settings.protect): "
                    "no clear may touch it"
                )
                self.add(Finding((*path, "campaign_id"), message, line))
            results = _results(fields["results"])
            target = (str(fields["server"]), str(fields["type_campaign"]), campaign_id)
            duplicate = first.claim(target, results, Finding(path, "", line))
            if duplicate is not None:
                self.add(duplicate)
            token = _token(fields, base_dir, token_files)
            if isinstance(token, TokenPool):
                token, problem = pools.claim(token, Finding((*path, _token_key(fields)), "", line))
                if problem is not None:
                    self.add(problem)
            for result in results:
                if len(clears) >= MAX_CLEARS:
                    message = f"the plan expands to more than {MAX_CLEARS} clears; split it up"
                    self.add(Finding(path, message, line))
                    raise PlanError(self.problems)
                clears.append(_clear(len(clears) + 1, target, result, token, fields, line))
        return tuple(clears)


def _campaign_lines(root: Node) -> list[int]:
    _, campaigns = node_at(root, ("campaigns",))
    items = campaigns.value if isinstance(campaigns, loader.SequenceNode) else []
    return [line_of(item) for item in items]


class _First:
    """The campaign entries seen so far by target, to find a clear written twice."""

    def __init__(self) -> None:
        #: (server, type_campaign, campaign_id without leading zeros) → each entry
        #: clearing it: its results, its campaign_id as written, and where it is.
        self.seen: dict[tuple[str, str, str], list[tuple[tuple[str | None, ...], str, Finding]]]
        self.seen = {}

    def claim(
        self, target: tuple[str, str, str], results: tuple[str | None, ...], here: Finding
    ) -> Finding | None:
        """A problem when ``results`` of ``target`` are already cleared, else None."""
        # The identity protect uses: 3001 and 03001 are one campaign to wolkvox.
        server, type_campaign, campaign_id = target
        earlier = self.seen.setdefault((server, type_campaign, campaign_key(campaign_id)), [])
        for result in results:
            for their_results, their_id, there in earlier:
                if result in their_results or result is None or None in their_results:
                    where = f"{there.where} at line {there.line}"
                    if their_id != campaign_id:
                        where += f", written {their_id!r}"
                    message = _duplicate(target, result, their_results, where)
                    return Finding((*here.path, "results"), message, here.line)
        earlier.append((results, campaign_id, here))
        return None


def _duplicate(
    target: tuple[str, str, str],
    result: str | None,
    their_results: tuple[str | None, ...],
    there: str,
) -> str:
    server, type_campaign, campaign_id = target
    what = f"campaign {campaign_id!r} on server {server!r} ({type_campaign})"
    if result in their_results:
        label = ALL if result is None else result
        return f"duplicate clear: {what}, result {label!r}, is already cleared by {there}"
    return (
        f"duplicate clear: {what} is cleared both with {ALL!r} and with a "
        f"result filter (see {there}); {ALL!r} already deletes every record"
    )


def _with_defaults(entry: dict[str, Data], defaults: dict[str, Data]) -> dict[str, Data]:
    """A campaign's fields over the defaults; its own token source replaces theirs."""
    fields = dict(defaults)
    if any(key in entry for key in _TOKEN_KEYS):
        for key in _TOKEN_KEYS:
            fields.pop(key, None)
    fields.update(entry)
    return fields


def _results(value: Data) -> tuple[str | None, ...]:
    """``None`` stands for "all": one clear without a filter."""
    if isinstance(value, list):
        return tuple(str(result) for result in value)
    return (None,)


class _Pools:
    """The pools seen so far: a token reference belongs to one pool at most.

    Two pools sharing a token would each count on it being theirs; a pool written
    again with the same tokens (in any order) is the same pool.
    """

    def __init__(self) -> None:
        self.by_members: dict[frozenset[TokenRef], TokenPool] = {}
        self.owner: dict[TokenRef, tuple[frozenset[TokenRef], Finding]] = {}

    def claim(self, pool: TokenPool, here: Finding) -> tuple[TokenPool, Finding | None]:
        """The pool as first written, and a problem when it lists a token twice or shares one."""
        members = frozenset(pool.refs)
        if len(members) != len(pool.refs):
            twice = next(ref for ref in pool.refs if pool.refs.count(ref) > 1)
            message = f"the pool lists {twice} twice (a token serves a pool once)"
            return pool, Finding(here.path, message, here.line)
        known = self.by_members.setdefault(members, pool)
        for ref in pool.refs:
            owner, there = self.owner.setdefault(ref, (members, here))
            if owner != members:
                message = (
                    f"{ref} is in two pools (see {there.where} at line {there.line}): "
                    "a token belongs to one pool at most"
                )
                return pool, Finding(here.path, message, here.line)
        return known, None


def _token_key(fields: dict[str, Data]) -> str:
    return "token_env" if "token_env" in fields else "token_file"


def _token(
    fields: dict[str, Data], base_dir: Path, resolved: dict[str, str]
) -> TokenRef | TokenPool:
    """The campaign's token, or its pool when the plan lists several."""
    if "token_env" in fields:
        names = fields["token_env"]
        if isinstance(names, list):
            return TokenPool(tuple(TokenRef("env", str(name)) for name in names))
        return TokenRef("env", str(names))
    written = fields["token_file"]
    if isinstance(written, list):
        return TokenPool(tuple(_token_file(str(w), base_dir, resolved) for w in written))
    return _token_file(str(written), base_dir, resolved)


def _token_file(written: str, base_dir: Path, resolved: dict[str, str]) -> TokenRef:
    if written not in resolved:
        resolved[written] = os.path.realpath(base_dir / written)
    return TokenRef("file", resolved[written])


def _clear(
    seq: int,
    target: tuple[str, str, str],
    result: str | None,
    token: TokenRef | TokenPool,
    fields: dict[str, Data],
    line: int,
) -> Clear:
    server, type_campaign, campaign_id = target
    tags = fields.get("tags")
    return Clear(
        seq,
        server,
        type_campaign,
        campaign_id,
        result,
        token,
        OnFailure(_text(fields, "on_failure", OnFailure.STOP.value)),
        float(_text(fields, "timeout_s", DEFAULT_TIMEOUT_S)),
        int(_text(fields, "retries", DEFAULT_RETRIES)),
        tuple(str(tag) for tag in tags) if isinstance(tags, list) else (),
        line,
    )


def _text(fields: dict[str, Data], key: str, default: object) -> str:
    value = fields.get(key)
    return value if isinstance(value, str) else str(default)


def _optional_text(fields: dict[str, Data], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _check_lock_url(url: str) -> str | None:
    """Why ``url`` cannot be the shared lock URL, or ``None`` when it can."""
    if _CONTROL_OR_SPACE.search(url):
        return f"{shown(url)} contains spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{shown(url)} has an invalid host or port"
    if parts.scheme not in ("redis", "rediss"):
        return f"{shown(url)} is not a redis:// or rediss:// URL"
    return None if host else f"{shown(url)} has no host"
