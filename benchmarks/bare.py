"""The bare loop: the least any tool could do to send a plan's clears with aiohttp.

Run by ``benchmarks/bench.py`` as its own process, beside ``orchestrator run``,
against the same simulator and the same calls::

    python benchmarks/bare.py JOB.json

``JOB.json`` (written by bench.py) holds ``max_parallel`` and one entry per
token: the name of the environment variable holding the token and the full
URLs of its clears, in plan order. One ``aiohttp.ClientSession`` with the
connector limits orchestrator uses (``limit`` = lanes running at once, no
per-host limit, no cookie jar); one task per token while there are no more
tokens than ``max_parallel`` (otherwise ``max_parallel`` tasks, each taking
the next token when its lane ends); each token's calls strictly in order; the
body is parsed and judged (code 200-299, empty error); one JSON line is
printed per outcome. No retries, no journal, no plan parsing: a floor, not a
tool.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import aiohttp
from yarl import URL

TOKEN_HEADER = "wolkvox-token"


def judge(status: int, body: bytes) -> tuple[bool, object, str | None]:
    """(succeeded, code, msg) of an answer: status and code 200-299, no error."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return False, None, None
    code = data.get("code")
    ok = (
        200 <= status <= 299
        and isinstance(code, int)
        and 200 <= code <= 299
        and not data.get("error")
    )
    msg = data.get("msg")
    return ok, code, msg if isinstance(msg, str) else None


async def _lane(
    session: aiohttp.ClientSession, token: str, index: int, urls: list[str], out: TextIO
) -> bool:
    headers = {TOKEN_HEADER: token}
    for seq, url in enumerate(urls, 1):
        async with session.delete(
            URL(url, encoded=True), headers=headers, allow_redirects=False
        ) as resp:
            status = resp.status
            body = await resp.read()
        ok, code, _ = judge(status, body)
        out.write(
            json.dumps(
                {
                    "event": "ok" if ok else "failed",
                    "lane": index,
                    "seq": seq,
                    "status": status,
                    "code": code,
                }
            )
            + "\n"
        )
        if not ok:  # on_failure: stop
            return False
    return True


async def _worker(
    session: aiohttp.ClientSession, lanes: Iterator[tuple[int, dict[str, Any]]], out: TextIO
) -> int:
    failed = 0
    for index, lane in lanes:
        if not await _lane(session, os.environ[lane["token_env"]], index, lane["urls"], out):
            failed += 1
    return failed


def allow_open_files() -> None:
    """Raise the soft limit of open files to the hard one: a connection per lane running
    outgrows the 1,024 many systems give (the least any tool with 2,000 lanes must do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(job: dict[str, Any]) -> int:
    lanes: list[dict[str, Any]] = job["lanes"]
    running = max(1, min(int(job["max_parallel"]), len(lanes)))
    connector = aiohttp.TCPConnector(limit=running, limit_per_host=0)
    out = sys.stdout
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=90),
    ) as session:
        shared = iter(enumerate(lanes, 1))
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_worker(session, shared, out)) for _ in range(running)]
    out.flush()
    return 1 if any(t.result() for t in tasks) else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: bare.py JOB.json", file=sys.stderr)
        sys.exit(2)
    allow_open_files()
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.exit(asyncio.run(main(json.load(handle))))
