"""--resume=ID is renamed before parsing: only a value joined by = is surely a run id."""

from __future__ import annotations

import pytest

from orchestrator.cli.resume_option import resume_spelled_apart


@pytest.mark.parametrize(
    ("argv", "spelled"),
    [
        (["run", "p.yaml", "--resume=R1"], ["run", "p.yaml", "--resume-id", "R1"]),
        (["run", "--resume", "p.yaml"], ["run", "--resume", "p.yaml"]),
        (["run", "p.yaml", "--resume="], ["run", "p.yaml", "--resume-id", ""]),
        # After --, every word is positional: a plan may be called --resume=x.yaml.
        (["run", "--", "--resume=x.yaml"], ["run", "--", "--resume=x.yaml"]),
        (["run", "--tag=--resume=x", "p.yaml"], ["run", "--tag=--resume=x", "p.yaml"]),
    ],
)
def test_only_the_joined_spelling_is_renamed(argv: list[str], spelled: list[str]) -> None:
    assert resume_spelled_apart(argv) == spelled
