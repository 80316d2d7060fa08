# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""README.md opens with the two set-up commands, and .ci/run runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_starts_with_two_setup_commands():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    main_job, tests = blocks[0], blocks[1]
    for cmd in (main_job, tests):
        assert "\n" not in cmd, "each set-up command is a single line"
        assert cmd.startswith('python -m pip install -e ".[test]" && '), "each command installs the project first"
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    tests_cmd = _bash_blocks((REPO / "README.md").read_text())[1].split(" && ", 1)[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert tests_cmd in ci.splitlines(), f"{tests_cmd!r} must be a line of .ci/run"
    assert 'pip install --disable-pip-version-check -q -e ".[test]"' in ci


def test_readme_bundle_table_names_every_bundle():
    text = (REPO / "README.md").read_text()
    for path in sorted((REPO / "bundles").glob("*/configs/metadata.json")):
        assert f"`{path.parents[1].name}`" in text, f"README.md bundle table lacks {path.parents[1].name}"
