# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The command table of ``python -m tlk_components``: every entry resolves, only the running command is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tlk_components.cli import COMMANDS, command, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_a_documented_function(name):
    fn = command(name)
    assert callable(fn) and fn.__doc__ and fn.__doc__.strip()
    assert command(name.replace("_", "-")) is fn


def test_an_unknown_command_names_the_known_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verfy"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "verfy" in err and "verify_dataset" in err  # python-fire lists the commands
    with pytest.raises(Exception, match="unknown command 'verfy'; the commands are: .*kidney_demo"):
        command("verfy")


def test_a_command_imports_only_its_own_module():
    code = (
        "import sys; from tlk_components.cli import main; main(['list']); "
        "print(sorted(m for m in ('tlk_components.data.plan', 'tlk_components.workflows.kidney_demo', "
        "'tlk_components.engines.evaluators.kidney') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
