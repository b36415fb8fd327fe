"""The reviewed-plan file: saved whole, read back only when nothing changed since."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.plan.model import Plan
from orchestrator.plan.reviewed import (
    _content_digest,
    check_current,
    check_prepared,
    check_save,
    file_sha256,
    load_for_review,
    load_reviewed,
    save_reviewed,
)
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan

PLAN = """\
version: 1
settings:
  cooldown_s: 5
  max_parallel_tokens: 4
defaults:
  server: 0014
  token_env: T_A
  type_campaign: predictive
campaigns:
  - campaign_id: 3001
    results: [no-answer, busy]
    retries: 1
    timeout_s: 30
  - campaign_id: 3002
    type_campaign: preview
    results: all
  - campaign_id: 4001
    server: 0038
    token_env: T_B
    results: [failed]
    on_failure: continue
"""

ENV = {"T_A": "value-of-token-a-123", "T_B": "value-of-token-b-456"}


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return path


def save(plan_path: Path, target: Path, env: dict[str, str] | None = ENV) -> Plan:
    plan = load_plan(plan_path)
    lanes = build_lanes(plan.clears, read_tokens(plan, env) if env is not None else None)
    save_reviewed(
        str(target),
        plan=plan,
        lanes=lanes,
        base_url="https://wv{server}.wolkvox.com",
        simulated=False,
        plan_path=str(plan_path),
        plan_sha256=file_sha256(plan_path),
        tags=[],
    )
    return plan


def rewrite(path: Path, change: dict[str, object], *, redigest: bool) -> None:
    """Change top-level fields of a saved file; ``redigest`` makes its digest match again."""
    document = json.loads(path.read_text()) | change
    if redigest:
        document["digest"] = _content_digest(document)
    path.write_text(json.dumps(document))


def test_what_is_saved_reads_back_as_the_same_clears_lanes_and_settings(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    plan = save(plan_path, target)
    review = load_reviewed(str(target))
    # Tags and source lines only select and locate clears: they are not sent.
    assert review.plan.clears == tuple(dataclasses.replace(c, tags=(), line=0) for c in plan.clears)
    assert review.plan.settings.cooldown_s == 5.0
    assert review.plan.settings.max_parallel_tokens == 4
    assert review.base_url == "https://wv{server}.wolkvox.com"
    assert review.lanes == ((("env:T_A",), (1, 2, 3)), (("env:T_B",), (4,)))
    assert check_current(review, base_url=None) == []
    check_prepared(review, build_lanes(review.plan.clears, read_tokens(review.plan, ENV)))


def test_the_token_values_and_their_fingerprints_are_never_saved(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    plan = save(plan_path, target)
    text = target.read_text()
    for secret in read_tokens(plan, ENV).values():
        assert secret.reveal() not in text
        assert secret.token_id not in text
    assert "env:T_A" in text and "env:T_B" in text


def test_a_file_changed_by_hand_is_refused_naming_its_digest(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    document = json.loads(target.read_text())
    document["clears"][0]["campaign_id"] = "9999"
    target.write_text(json.dumps(document))
    with pytest.raises(UsageError, match="changed after it was saved") as refused:
        load_reviewed(str(target))
    assert "nothing was sent" in str(refused.value)


def test_only_the_layout_changed_still_reads(plan_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    target.write_text(json.dumps(json.loads(target.read_text()), indent=8))
    assert len(load_reviewed(str(target)).plan.clears) == 4


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{nope", "not JSON"),
        ('{"format": "a", "format": "b"}', "'format' appears twice"),
        ('{"format": "something else"}', "is not a reviewed plan"),
        ("[]", "is not a reviewed plan"),
    ],
)
def test_what_is_not_a_reviewed_file_is_refused(tmp_path: Path, text: str, why: str) -> None:
    target = tmp_path / "reviewed.json"
    target.write_text(text)
    with pytest.raises(UsageError, match=why):
        load_reviewed(str(target))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot be read"):
        load_reviewed(str(tmp_path / "absent.json"))


def test_a_value_wolkvox_would_not_accept_is_refused_even_with_a_matching_digest(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    clears = json.loads(target.read_text())["clears"]
    clears[0]["result"] = "everything"
    rewrite(target, {"clears": clears}, redigest=True)
    with pytest.raises(UsageError, match=r"clears\[0\]\.result"):
        load_reviewed(str(target))


def test_lanes_that_lose_a_clear_are_refused_even_with_a_matching_digest(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    rewrite(target, {"lanes": [{"tokens": ["env:T_A"], "seqs": [1, 2, 3]}]}, redigest=True)
    with pytest.raises(UsageError, match="each clear exactly once"):
        load_reviewed(str(target))


def test_clears_that_differ_from_their_recorded_identity_are_refused(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    clears = json.loads(target.read_text())["clears"]
    clears[0]["retries"] = 3
    rewrite(target, {"clears": clears}, redigest=True)
    with pytest.raises(UsageError, match="clears_digest"):
        load_reviewed(str(target))


def test_a_changed_plan_file_is_refused(plan_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    plan_path.write_text(PLAN.replace("3002", "3003"))
    with pytest.raises(UsageError, match="the plan changed since the review"):
        check_current(load_reviewed(str(target)), base_url=None)


def test_a_plan_file_that_is_gone_is_said_and_not_refused(plan_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    plan_path.unlink()
    (note,) = check_current(load_reviewed(str(target)), base_url=None)
    assert "is gone" in note


def test_another_base_url_is_refused(plan_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    with pytest.raises(UsageError, match="--base-url says https://wv"):
        check_current(load_reviewed(str(target)), base_url="https://wv{server}.example.com")


def test_tokens_that_now_share_a_value_make_other_lanes_and_are_refused(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    review = load_reviewed(str(target))
    same = {"T_A": "one-value", "T_B": "one-value"}
    lanes = build_lanes(review.plan.clears, read_tokens(review.plan, same))
    with pytest.raises(
        UsageError, match=r"reviewed env:T_A with 3 clear.*now env:T_A and env:T_B with 4"
    ):
        check_prepared(review, lanes)


def test_a_lock_url_with_a_password_keeps_the_file_private(plan_path: Path, tmp_path: Path) -> None:
    plan_path.write_text(PLAN.replace("settings:\n", "settings:\n  lock_url: redis://:pw@host\n"))
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_reviewed(str(target)).plan.settings.lock_url == "redis://:pw@host"


def test_saved_without_tokens_the_lanes_match_tokens_of_distinct_values(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target, env=None)  # the author's machine holds no token
    review = load_reviewed(str(target))
    check_prepared(review, build_lanes(review.plan.clears, read_tokens(review.plan, ENV)))


def test_a_plan_changed_while_it_is_read_for_saving_is_refused(plan_path: Path) -> None:
    def load_while_edited() -> Plan:
        plan = load_plan(plan_path)
        plan_path.write_text(PLAN.replace("3002", "3003"))
        return plan

    with pytest.raises(UsageError, match="changed while it was read"):
        load_for_review(str(plan_path), load_while_edited)


@pytest.mark.parametrize(
    ("save_as", "dry_run", "resume", "why"),
    [
        ("reviewed.json", False, None, "--save needs --dry-run"),
        ("reviewed.json", True, "latest", "cannot be used with --resume"),
        ("plan.yaml", True, None, "is the plan itself"),
        ("missing/reviewed.json", True, None, "cannot write"),
        (".", True, None, "cannot write"),
    ],
)
def test_a_save_that_cannot_be_done_is_refused_first(
    plan_path: Path, save_as: str, dry_run: bool, resume: str | None, why: str
) -> None:
    with pytest.raises(UsageError, match=why):
        check_save(str(plan_path.parent / save_as), str(plan_path), dry_run=dry_run, resume=resume)


def test_a_fifo_where_the_plan_was_is_refused_without_hanging(
    plan_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reviewed.json"
    save(plan_path, target)
    plan_path.unlink()
    os.mkfifo(plan_path)
    with pytest.raises(UsageError, match="not a regular file"):
        check_current(load_reviewed(str(target)), base_url=None)


POOLED = """\
version: 1
settings:
  order: longest_first
  maintenance_wait_s: 600
defaults:
  server: 0014
  type_campaign: predictive
  token_env: [T_A, T_B]
campaigns:
  - campaign_id: 6001
    results: [busy, abandon]
  - campaign_id: 6002
    results: all
"""


def test_a_pool_is_saved_as_its_references_and_its_campaigns_may_start_in_another_order(
    tmp_path: Path,
) -> None:
    plan_path = tmp_path / "pooled.yaml"
    plan_path.write_text(POOLED)
    target = tmp_path / "reviewed.json"
    plan = save(plan_path, target)
    saved = json.loads(target.read_text())
    assert saved["clears"][0]["token"] == ["env:T_A", "env:T_B"]
    assert saved["settings"]["order"] == "longest_first"
    assert saved["settings"]["maintenance_wait_s"] == 600.0
    review = load_reviewed(str(target))
    assert review.plan.clears[0].token == plan.clears[0].token
    (lane,) = build_lanes(review.plan.clears, read_tokens(review.plan, ENV))
    # The journal's durations may put campaign 6002 first: still the reviewed clears.
    longest_first = dataclasses.replace(lane, clears=(lane.clears[2], *lane.clears[:2]))
    check_prepared(review, (longest_first,))
