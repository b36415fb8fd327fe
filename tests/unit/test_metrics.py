"""The metrics file, read back with Prometheus' own parser."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.errors import OrchestratorError
from orchestrator.output.metrics import MetricsError, render_metrics, write_metrics

PLAN = "plans/nightly.yaml"
RUN: dict[str, Any] = {
    "plan": PLAN,
    "run_id": "20261128T045500Z-3fa9c1",
    "started_at": 1764305700.25,
    "finished_at": 1764305762.75,
    "exit_code": 1,
    "totals": {"succeeded": 7, "already_succeeded": 4, "failed": 1, "skipped": 2},
    "calls_per_token": {"b2c3d4e5f6a1": 3, "a1b2c3d4e5f6": 6},
    "duration_s": 62.5,
}


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Family name -> (labels, value) of each sample; every family must be a gauge."""
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        assert family.documentation
        families[family.name] = [(s.labels, s.value) for s in family.samples]
    return families


def test_every_fact_of_the_run_reads_back_exactly() -> None:
    assert parsed(render_metrics(**RUN)) == {
        "orchestrator_run_started_timestamp_seconds": [({"plan": PLAN}, 1764305700.25)],
        "orchestrator_run_finished_timestamp_seconds": [({"plan": PLAN}, 1764305762.75)],
        "orchestrator_run_exit_code": [({"plan": PLAN}, 1.0)],
        "orchestrator_run_duration_seconds": [({"plan": PLAN}, 62.5)],
        "orchestrator_clears": [
            ({"plan": PLAN, "outcome": "succeeded"}, 7.0),
            ({"plan": PLAN, "outcome": "already_succeeded"}, 4.0),
            ({"plan": PLAN, "outcome": "failed"}, 1.0),
            ({"plan": PLAN, "outcome": "skipped"}, 2.0),
        ],
        "orchestrator_token_calls": [
            ({"plan": PLAN, "token_id": "a1b2c3d4e5f6"}, 6.0),
            ({"plan": PLAN, "token_id": "b2c3d4e5f6a1"}, 3.0),
        ],
        "orchestrator_run_info": [({"plan": PLAN, "run_id": "20261128T045500Z-3fa9c1"}, 1.0)],
    }


def test_the_text_has_help_and_type_lines_and_ends_every_line_with_a_newline() -> None:
    text = render_metrics(**RUN)
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    assert lines[:2] == [
        "# HELP orchestrator_run_started_timestamp_seconds Unix time the run started.",
        "# TYPE orchestrator_run_started_timestamp_seconds gauge",
    ]
    assert lines[2].startswith(
        'orchestrator_run_started_timestamp_seconds{plan="plans/nightly.yaml"} '
    )
    assert float(lines[2].rpartition(" ")[2]) == 1764305700.25
    assert sum(line.startswith("# TYPE ") for line in lines) == 7


def test_a_timestamp_keeps_its_sub_second_digits() -> None:
    text = render_metrics(**{**RUN, "started_at": 1764305700.123456})
    [(_, value)] = parsed(text)["orchestrator_run_started_timestamp_seconds"]
    assert value == 1764305700.123456


def test_label_values_are_escaped() -> None:
    plan = 'C:\\plans\\"night"\nly.yaml'
    families = parsed(render_metrics(**{**RUN, "plan": plan}))
    for samples in families.values():
        for labels, _ in samples:
            assert labels["plan"] == plan
    text = render_metrics(**{**RUN, "plan": plan})
    assert 'plan="C:\\\\plans\\\\\\"night\\"\\nly.yaml"' in text


def test_outcomes_without_clears_are_written_as_zero() -> None:
    families = parsed(render_metrics(**{**RUN, "totals": {}, "calls_per_token": {}}))
    assert [value for _, value in families["orchestrator_clears"]] == [0.0, 0.0, 0.0, 0.0]
    assert "orchestrator_token_calls" not in families or not families["orchestrator_token_calls"]


@pytest.mark.parametrize("exit_code", [0, 1, 130])
def test_the_exit_code_is_written_as_it_is(exit_code: int, tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.prom"
    write_metrics(path, **{**RUN, "exit_code": exit_code})
    [(_, value)] = parsed(path.read_text())["orchestrator_run_exit_code"]
    assert value == exit_code


def test_the_file_is_replaced_whole_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.prom"
    path.write_text("old contents that are much longer than nothing\n" * 100)
    old_inode = path.stat().st_ino
    write_metrics(path, **RUN)
    assert path.read_text() == render_metrics(**RUN)
    assert path.stat().st_ino != old_inode  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestrator.prom"]


def test_the_file_is_readable_by_node_exporter_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.prom"
    old = os.umask(0o077)
    try:
        write_metrics(path, **RUN)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "orchestrator.prom"
    path.write_text("old\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(MetricsError, match="No space left on device") as caught:
        write_metrics(path, **RUN)
    assert isinstance(caught.value, OrchestratorError)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestrator.prom"]


def test_a_missing_directory_is_a_metrics_error(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="cannot write"):
        write_metrics(tmp_path / "absent" / "orchestrator.prom", **RUN)
