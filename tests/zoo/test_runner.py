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


def test_run_bundle_logs_times_and_reports_a_failure_with_the_log_tail(tmp_path):
    from tlk_components.zoo.runner import run_bundle

    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"message": "hello", "initialize": [], "run": ["$print('said ' + @message)"]}))
    elapsed = run_bundle([ok], tmp_path / "logs" / "ok.log", {"message": "bonjour"})
    assert elapsed > 0 and "said bonjour" in (tmp_path / "logs" / "ok.log").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"initialize": [], "run": ["$int('not a number')"]}))
    with pytest.raises(RuntimeError, match=r"(?s)bundle run failed \(exit \d+\).*bad\.log.*not a number"):
        run_bundle([bad], tmp_path / "bad.log")
