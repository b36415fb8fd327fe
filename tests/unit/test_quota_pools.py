"""--check-quota with a pool: each token asked once, the pool's worst case against all of them."""

from __future__ import annotations

from test_quota import lanes, simulated

from orchestrator.wolkvox.quota import check_quota, render_quota

#: The pool: 4 campaigns x 2 clears x (1 + 1 retry) = 16 calls at worst; P_1 alone: 1 x 2 = 2.
POOLED = """\
version: 1
defaults: {server: 0014, token_env: [P_1, P_2], type_campaign: predictive, retries: 1}
campaigns:
  - {campaign_id: 1, results: [busy, answer]}
  - {campaign_id: 2, results: [busy, answer]}
  - {campaign_id: 3, results: [busy, answer]}
  - {campaign_id: 4, results: [busy, answer]}
  - {campaign_id: 5, results: all, token_env: P_1}
"""
ENV = {"P_1": "tok-pool-one-SECRET", "P_2": "tok-pool-two-SECRET"}


async def test_a_pool_is_enough_when_its_tokens_together_cover_its_worst_case() -> None:
    # 10 calls a day each, one spent by the check: 9 + 9, less P_1's own lane (2) = 16.
    async with simulated(token_limit=10) as (sim, client):
        lines = await check_quota(lanes(POOLED, ENV), client)
        # Each token was asked once, though P_1 serves the pool and a lane of its own.
        assert sim.stats()["total_calls"] == 2
    one, two, pool, alone = lines
    assert (one.pool, two.pool, one.left, two.left) == ("pool-1", "pool-1", 9, 9)
    assert (pool.token_id, pool.left, pool.worst_case, pool.enough) == ("", 16, 16, True)
    assert (alone.token_names, alone.worst_case, alone.enough) == (("env:P_1",), 2, True)
    table = render_quota(lines)
    assert "pool-1, all its tokens (env:P_1, env:P_2)" in table
    assert "in pool-1" in table
    assert "SECRET" not in table


async def test_a_pool_short_of_calls_is_not_enough() -> None:
    async with simulated(token_limit=9) as (_, client):
        lines = await check_quota(lanes(POOLED, ENV), client)
    pool = next(line for line in lines if line.pool and not line.token_id)
    assert (pool.left, pool.enough) == (14, False)
    assert "NOT ENOUGH" in render_quota(lines)
