"""The example plans shipped in plans/: each loads, validates, runs, and says what it is for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan.model import OnFailure, Plan, TokenPool
from orchestrator.plan.schema import SCHEMA_FILE
from orchestrator.plan.validate import load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "plans"
NEW_PLANS = (
    "nightly-recycling.yaml",
    "pre-upload-reset.yaml",
    "runbook-single.yaml",
    "pooled-pre-upload.yaml",
)
SCHEMA_LINE = "# yaml-language-server: $schema=../docs/plan-v1.schema.json"
RECYCLED = {"no-answer", "busy", "abandon", "congestion", "chanunavail", "failed"}


def plan(name: str) -> Plan:
    return load_plan(PLANS / name)


@pytest.mark.parametrize("name", NEW_PLANS)
def test_each_plan_loads_and_validates_from_the_command_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan(name).clears
    assert main(["validate", str(PLANS / name)]) == 0
    assert "lane 1" in capsys.readouterr().out


@pytest.mark.parametrize("name", NEW_PLANS)
def test_each_plan_points_editors_at_the_schema(name: str) -> None:
    first_line = (PLANS / name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line == SCHEMA_LINE
    assert (PLANS / "../docs/plan-v1.schema.json").resolve() == (ROOT / SCHEMA_FILE).resolve()
    assert (ROOT / SCHEMA_FILE).is_file()


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_schema_line_in_any_plan_names_a_file_that_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"^# yaml-language-server: \$schema=(\S+)$", text, re.MULTILINE):
        assert (path.parent / target).is_file(), target


@pytest.mark.parametrize("name", NEW_PLANS)
def test_each_plan_runs_against_the_simulator(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", str(PLANS / name), "--simulate", "--yes", "--log-format", "json"]
    assert main([*args, "--state-dir", str(tmp_path), "--check-quota"]) == 0
    assert '"event": "run.finished"' in capsys.readouterr().out


def test_nightly_recycling_retries_dead_ends_on_a_couple_of_tokens() -> None:
    nightly = plan("nightly-recycling.yaml")
    tokens = {clear.token for clear in nightly.clears}
    campaigns = {clear.target for clear in nightly.clears}
    assert len(tokens) == 2 and len(campaigns) >= 6
    assert all(clear.result in RECYCLED for clear in nightly.clears)
    assert {clear.result for clear in nightly.clears} == RECYCLED
    assert all("nightly" in clear.tags for clear in nightly.clears)
    assert all(clear.on_failure is OnFailure.CONTINUE for clear in nightly.clears)
    assert nightly.settings.protect
    assert not nightly.settings.protect & {clear.campaign_id for clear in nightly.clears}


def test_pre_upload_reset_clears_everything_and_aborts_at_the_first_failure() -> None:
    reset = plan("pre-upload-reset.yaml")
    assert all(clear.result is None for clear in reset.clears)
    assert all(clear.on_failure is OnFailure.ABORT for clear in reset.clears)
    assert all("pre-upload" in clear.tags for clear in reset.clears)


def test_the_pooled_plan_shares_four_tokens_between_its_campaigns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pooled = plan("pooled-pre-upload.yaml")
    pools = {clear.token for clear in pooled.clears}
    assert len(pools) == 1
    (pool,) = pools
    assert isinstance(pool, TokenPool) and len(pool.refs) == 4
    assert len({clear.target for clear in pooled.clears}) == 8
    assert all(clear.on_failure is OnFailure.STOP for clear in pooled.clears)
    assert main(["validate", str(PLANS / "pooled-pre-upload.yaml")]) == 0
    assert "a pool of 4 token(s): 8 campaign(s)" in capsys.readouterr().out


def test_the_runbook_plan_clears_one_campaign_with_one_or_two_filters() -> None:
    runbook = plan("runbook-single.yaml")
    assert len({clear.target for clear in runbook.clears}) == 1
    assert 1 <= len(runbook.clears) <= 2
    assert all(clear.result is not None for clear in runbook.clears)


# --- docs/operations.md: its commands, plan and manifests match the code --------------------

OPERATIONS = ROOT / "docs" / "operations.md"


def _blocks(language: str | None = None) -> list[str]:
    """The fenced code blocks of the guide (in ``language`` only, when given)."""
    blocks: list[str] = []
    current: list[str] | None = None
    fence = ""
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if current is None and stripped.startswith("```"):
            current, fence = [], stripped[3:]
        elif current is not None and stripped == "```":
            if language is None or fence == language:
                blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _commands() -> list[tuple[str, str]]:
    """(subcommand, its options as written) of every orchestrator command in a code block."""
    found = []
    for block in _blocks():
        joined = re.sub(r"\\\n\s*", " ", block)
        for match in re.finditer(
            r"orchestrator (run|clear|validate|runs|show)\b([^|&>;\n]*)", joined
        ):
            found.append((match.group(1), match.group(2)))
    return found


def test_every_option_the_operations_guide_uses_exists(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands()
    assert {name for name, _ in commands} >= {"run", "clear", "runs", "show"}
    for name, options in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        usage = capsys.readouterr().out
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", options):
            assert re.search(rf"{option}\b", usage), f"orchestrator {name} has no {option}"


def test_the_plans_the_operations_guide_names_exist() -> None:
    named = set(re.findall(r"plans/([\w-]+\.yaml)", OPERATIONS.read_text(encoding="utf-8")))
    assert named >= set(NEW_PLANS)
    assert all((PLANS / name).is_file() for name in named)


def test_the_kubernetes_manifests_parse_and_their_plan_validates() -> None:
    (manifests,) = [b for b in _blocks("yaml") if "kind: CronJob" in b]
    documents = list(yaml.safe_load_all(manifests))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "CronJob"]
    config_map, _, cron_job = documents
    assert cron_job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    plan_name = container["args"][1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["plans"] == "/plans" and mounts["state"] == "/state"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["plans"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "secret" in volumes["tokens"]
    text = config_map["data"][plan_name]
    plan_in_docs = parse_plan(text, plan_name, base_dir=Path("/plans"))
    token_files = {clear.token.name for clear in plan_in_docs.clears}
    assert {ref.kind for ref in plan_in_docs.token_refs()} == {"file"}
    assert all(name.startswith(mounts["tokens"] + "/") for name in token_files)


def test_the_alert_rules_parse() -> None:
    (rules,) = [b for b in _blocks("yaml") if "alert:" in b]
    assert all("expr" in rule for rule in yaml.safe_load(rules))
