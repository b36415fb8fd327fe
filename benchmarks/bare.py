"""The bare loop: the least any tool could do to send a plan's clears with aiohttp.

Run by ``benchmarks/bench.py`` as its own process, beside ``orchestrator run``,
against the same simulator and the same calls::

    python benchmarks/bare.py JOB.json

``JOB.json`` holds ``max_parallel`` and one lane per token: the environment
variable holding the token and the full URLs of its clears, in plan order. One
``aiohttp.ClientSession`` (``limit`` = lanes running at once, no per-host limit,
no cookie jar); ``max_parallel`` workers, each taking the next lane when its own
ends; each lane's calls strictly in order; the body parsed and judged; one JSON
line per outcome on stdout. No plan parsing, retries, journal or locks: a
baseline, not a tool.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
from yarl import URL

TOKEN_HEADER = "wolkvox-token"


def succeeded(status: int, body: bytes) -> bool:
    """HTTP status and the body's code 200-299, and no error, as wolkvox answers success."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    code = data.get("code")
    return (
        200 <= status <= 299
        and isinstance(code, int)
        and 200 <= code <= 299
        and not data.get("error")
    )


async def worker(session: aiohttp.ClientSession, lanes: Iterator[dict[str, Any]]) -> int:
    failed = 0
    for lane in lanes:
        headers = {TOKEN_HEADER: os.environ[lane["token_env"]]}
        for seq, url in enumerate(lane["urls"], 1):
            async with session.delete(URL(url, encoded=True), headers=headers) as resp:
                ok = succeeded(resp.status, await resp.read())
            print(json.dumps({"event": "ok" if ok else "failed", "seq": seq}))
            if not ok:  # on_failure: stop
                failed += 1
                break
    return failed


async def main(job: dict[str, Any]) -> int:
    running = max(1, min(int(job["max_parallel"]), len(job["lanes"])))
    connector = aiohttp.TCPConnector(limit=running, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=90),
    ) as session:
        lanes = iter(job["lanes"])
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(worker(session, lanes)) for _ in range(running)]
    return 1 if any(task.result() for task in tasks) else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: bare.py JOB.json")
    # A connection per lane outgrows the 1,024 open files many systems give by default.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.exit(asyncio.run(main(json.load(handle))))
