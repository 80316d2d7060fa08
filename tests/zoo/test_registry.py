# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Unit tests of the registry, dataset reports, metadata schema and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tlk_components
from tlk_components.data.datasets import DatasetReport
from tlk_components.data.registry import DATA_MODULES
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.zoo import registry
from tlk_components.zoo.metadata import metadata_errors, parse_version
from tlk_components.zoo.verify import VerifyError, is_checkout_bundle, verify_cmd


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


# --- where the bundles folder comes from ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


class _FakeDist:
    """A stand-in for ``importlib.metadata.distribution('tlk_components')`` with a chosen PEP 610 record."""

    def __init__(self, direct_url, package_dir):
        self._raw = None if direct_url is None else json.dumps(direct_url)
        self._package_dir = package_dir

    def read_text(self, name):
        return self._raw if name == "direct_url.json" else None

    def locate_file(self, path):
        return Path(self._package_dir).parent / path


@pytest.fixture()
def fresh_source(monkeypatch):
    """Clear the cached install source around a test and drop ``TLK_BUNDLES_DIR``."""
    monkeypatch.delenv(registry.BUNDLES_ENV, raising=False)
    registry.install_source.cache_clear()
    yield
    registry.install_source.cache_clear()


def _fake_checkout(tmp_path):
    bundle = tmp_path / "checkout" / "bundles" / "some_bundle" / "configs"
    bundle.mkdir(parents=True)
    (bundle / "metadata.json").write_text("{}")
    return tmp_path / "checkout"


def test_this_test_run_finds_the_bundles_of_the_checkout_pip_installed(fresh_source):
    # README's set-up installs this checkout editable: its PEP 610 record names this folder
    assert registry.install_source() == REPO
    assert registry.source_bundles() == REPO / "bundles"
    assert set(registry.list_bundles()) >= {"kidney_ct_da_segmentation", "mnist_mlp_classification"}
    assert is_checkout_bundle(REPO / "bundles" / "mnist_mlp_classification")


def test_a_non_editable_install_from_a_checkout_finds_that_checkout(monkeypatch, fresh_source, tmp_path):
    checkout = _fake_checkout(tmp_path)
    imported = Path(tlk_components.__file__).resolve().parent  # "site-packages/tlk_components" of the fake install
    fake = _FakeDist({"url": checkout.as_uri(), "dir_info": {}}, imported)
    egg_info = _FakeDist(None, tmp_path)  # a build's egg-info in the working directory comes first, without a record
    monkeypatch.setattr(registry, "distributions", lambda name: [egg_info, fake])
    assert registry.install_source() == checkout
    assert registry.bundles_dir() == checkout / "bundles"
    assert list(registry.list_bundles()) == ["some_bundle"]
    assert registry.find_bundle("some_bundle") == checkout / "bundles" / "some_bundle"
    assert is_checkout_bundle(checkout / "bundles" / "some_bundle")
    assert not is_checkout_bundle(REPO / "bundles" / "mnist_mlp_classification")


@pytest.mark.parametrize(
    "record",
    [
        "not installed",
        None,  # installed from an index: no direct_url.json
        {"url": "https://example.org/tlk_components-0.1.0.tar.gz", "archive_info": {}},
        "editable elsewhere",  # this copy came through PYTHONPATH, pip installed another checkout editable
        "not json",
    ],
)
def test_no_install_source_means_no_bundles_folder_and_a_message_saying_what_to_set(
    monkeypatch, fresh_source, tmp_path, record
):
    other = _fake_checkout(tmp_path)
    if record == "not installed":
        found = []
    elif record == "not json":
        found = [_FakeDist(None, tmp_path)]
        found[0]._raw = "{not json"
    else:
        url = {"url": other.as_uri(), "dir_info": {"editable": True}} if record == "editable elsewhere" else record
        found = [_FakeDist(url, tmp_path / "site-packages" / "tlk_components")]
    monkeypatch.setattr(registry, "distributions", lambda name: found)
    assert registry.install_source() is None
    assert registry.bundles_dir() is None and registry.list_bundles() == {}
    with pytest.raises(ConfigError, match="not installed from a checkout .*TLK_BUNDLES_DIR"):
        registry.find_bundle("mnist_mlp_classification")
    with pytest.raises(VerifyError, match="TLK_BUNDLES_DIR"):
        verify_cmd(all=True, static=True)
    assert not is_checkout_bundle(other / "bundles" / "some_bundle")
    # an explicit folder always works
    assert registry.find_bundle(REPO / "bundles" / "mnist_mlp_classification").name == "mnist_mlp_classification"


def test_tlk_bundles_dir_overrides_the_checkout_and_is_not_trusted(monkeypatch, fresh_source, tmp_path):
    checkout = _fake_checkout(tmp_path)
    monkeypatch.setenv(registry.BUNDLES_ENV, str(checkout / "bundles"))
    assert registry.bundles_dir() == checkout / "bundles"
    assert list(registry.list_bundles()) == ["some_bundle"]
    assert not is_checkout_bundle(checkout / "bundles" / "some_bundle")  # only the install's own bundles run code
    monkeypatch.setenv(registry.BUNDLES_ENV, str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"no bundles found in .*empty"):
        registry.find_bundle("some_bundle")


def test_a_copy_on_pythonpath_does_not_borrow_the_installed_checkouts_bundles(tmp_path):
    copy = tmp_path / "snapshot"
    shutil.copytree(REPO / "tlk_components", copy / "tlk_components", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from tlk_components.zoo import registry; print(registry.install_source(), registry.bundles_dir())"
    env = {k: v for k, v in os.environ.items() if k != registry.BUNDLES_ENV}
    env["PYTHONPATH"] = str(copy)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None"]
