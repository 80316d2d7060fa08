# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The ``monai.bundle run`` command line used by the main job, the benchmarks and the bundle tests."""

from __future__ import annotations

import json
import sys

import fire.parser
import pytest

from tlk_components.zoo.runner import bundle_command


def test_bundle_command_single_and_merged_configs():
    cmd = bundle_command(["b/configs/train.json"], {"epochs": 2, "train__dataset__cache_rate": 0.0})
    assert cmd[:6] == [sys.executable, "-m", "monai.bundle", "run", "--config_file", "b/configs/train.json"]
    assert cmd[6:] == ["--epochs", "2", "--train#dataset#cache_rate", "0.0"]
    merged = bundle_command(["a/train.json", "a/evaluate.json"])
    assert json.loads(merged[5]) == ["a/train.json", "a/evaluate.json"]


@pytest.mark.parametrize("value", [True, False, [48, 48, 32], {"a": 1}, 0.5, "cpu"])
def test_override_values_survive_fire_parsing(value):
    text = bundle_command(["t.json"], {"x": value})[-1]
    assert fire.parser.DefaultParseValue(text) == value


def test_ill_bundle_command_needs_a_config():
    with pytest.raises(ValueError, match="at least one config file"):
        bundle_command([])
