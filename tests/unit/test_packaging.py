"""What a packager checks: an SPDX licence shipped in the wheel, an image that says what it is."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_the_licence_is_an_spdx_expression_and_its_file_ships_in_the_wheel() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")


def test_the_build_backend_reads_spdx_licences() -> None:
    # setuptools below 77 rejects a string `license`; the table form stops building in 2027.
    requires = pyproject()["build-system"]
    assert isinstance(requires, dict)
    (setuptools,) = [r for r in requires["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert match is not None and int(match.group(1)) >= 77


def test_the_image_is_labelled_and_keeps_only_state_as_a_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for label in ("title", "description", "licenses", "version"):
        assert f"org.opencontainers.image.{label}=" in dockerfile
    assert re.findall(r"^VOLUME (.*)$", dockerfile, re.MULTILINE) == ['["/state"]']
    assert "COPY orchestrator ./orchestrator" in dockerfile
