# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Unit tests of the registry, dataset reports, metadata schema and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tlk_components.data.datasets import DatasetReport
from tlk_components.data.registry import DATA_MODULES
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.zoo import registry
from tlk_components.zoo.metadata import metadata_errors, parse_version


def test_report_lists_every_problem():
    r = DatasetReport("/data/x", n_cases=3, fix="re-export the labels")
    r.add("case_1", "label missing")
    r.add("case_2", "NaN voxels")
    assert not r.ok
    with pytest.raises(DatasetError) as e:
        r.raise_if_bad()
    text = str(e.value)
    assert "case_1: label missing" in text and "case_2: NaN voxels" in text and "Fix: re-export" in text
    assert e.value.problems == ["case_1: label missing", "case_2: NaN voxels"]


def test_every_bundle_has_a_registered_data_module():
    for name in registry.list_bundles():
        assert name in DATA_MODULES


def test_find_bundle_unknown_lists_known():
    with pytest.raises(ConfigError, match="unknown bundle 'nope'"):
        registry.find_bundle("nope")


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["x", "run", "--config_file", "/a/b/configs/train.json"], "/a/b"),
        (["x", "run", "--config_file=/a/b/configs/train.json"], "/a/b"),
        (["x", "run", "--config_file", "['/a/b/configs/train.json','/a/b/configs/evaluate.json']"], "/a/b"),
        (["x", "run", "--config_file", '["/a/c/configs/train.json"]'], "/a/c"),
        (["x", "run"], "."),
    ],
)
def test_infer_bundle_root(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    assert registry.infer_bundle_root() == expected


def test_parse_version_orders_numerically():
    assert parse_version("0.5.10") > parse_version("0.5.9")
    with pytest.raises(ValueError, match="dotted integers"):
        parse_version("1.x")


def _meta():
    tensor = {
        "type": "image",
        "format": "magnitude",
        "num_channels": 1,
        "spatial_shape": [28, 28],
        "dtype": "float32",
        "value_range": [0, 1],
    }
    return {
        "schema": "s",
        "version": "0.1.1",
        "changelog": {"0.1.1": "fix", "0.1.0": "init"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "required_packages_version": {},
        "name": "n",
        "task": "t",
        "description": "d",
        "authors": "a",
        "copyright": "c",
        "eval_metrics": {"accuracy": 0.9},
        "network_data_format": {"inputs": {"image": tensor}, "outputs": {"pred": dict(tensor, num_channels=10)}},
    }


def test_metadata_schema_accepts_valid_and_names_problems():
    assert metadata_errors(_meta()) == []
    bad = _meta()
    del bad["authors"]
    bad["version"] = "0.2.0"
    bad["network_data_format"]["inputs"]["image"].pop("dtype")
    errs = "\n".join(metadata_errors(bad))
    assert "'authors' is a required property" in errs
    assert "version 0.2.0 has no changelog entry" in errs
    assert "network_data_format/inputs/image" in errs


def test_metadata_changelog_newer_than_version():
    m = _meta()
    m["changelog"]["0.1.10"] = "later"
    assert any("newer than version" in e for e in metadata_errors(m))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tlk_components", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_and_list():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("list", "prepare_demo", "verify_dataset"):
        assert cmd in out.stdout + out.stderr
    assert _cli("list").returncode == 0


def test_ill_cli_unknown_bundle_is_one_clear_line():
    out = _cli("prepare-demo", "nope", "/tmp/x")
    assert out.returncode == 2
    assert "no data module registered for bundle 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
