# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""MONAI ecosystem interop: the zoo CI's checks and ``ConfigWorkflow.check_properties()`` catch each broken rule.

Every real bundle passing all checks is ``tests/zoo/test_verify.py::test_every_zoo_bundle_passes_verify``; here a
copy of the smallest bundle (mnist) is broken one rule at a time and the right check must name the problem.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from tlk_components.zoo.registry import list_bundles
from tlk_components.zoo.verify import pretty_json, verify_bundle

REPO = Path(__file__).resolve().parents[2]
BUNDLES = list_bundles()
MNIST = "mnist_mlp_classification"
# copies of bundles live outside bundles/: their code checks run with trust=True, which warns (by design)
pytestmark = pytest.mark.filterwarnings("ignore:verify builds the configs:UserWarning")


def _copy_mnist(tmp_path: Path) -> Path:
    dst = tmp_path / MNIST
    shutil.copytree(BUNDLES[MNIST], dst, ignore=shutil.ignore_patterns("demo_data", "eval", "models", "runs"))
    return dst


def _edit(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(pretty_json(obj))


def _properties(bundle: Path) -> str:
    report = verify_bundle(bundle, checks=["properties"], trust=True)
    assert not report.ok, report.summary()
    return "\n".join(report["properties"].problems)


def test_copy_of_a_real_bundle_passes_the_property_check(tmp_path):
    b = _copy_mnist(tmp_path)
    report = verify_bundle(b, checks=["properties"], trust=True)
    assert report.ok, report.summary()
    assert "check_properties() returns [] for train, infer" in report["properties"].detail
    assert not (b / "demo_data").exists() and not (b / "eval").exists(), "the check wrote into the bundle"


def test_ill_train_handler_given_as_a_string_reference(tmp_path):
    """MONAI reads every train#handlers item as a dict: a "@ref" string crashes MONAI Label's property check."""
    b = _copy_mnist(tmp_path)

    def to_string(cfg):
        cfg["train"]["lr_handler"] = cfg["train"]["handlers"][0]
        cfg["train"]["handlers"][0] = "@train#lr_handler"

    _edit(b / "configs" / "train.json", to_string)
    text = _properties(b)
    assert "configs/train.json" in text and "workflow_type='train'" in text


def test_ill_optional_property_referenced_by_another_id(tmp_path):
    """train#trainer#key_train_metric must be '@train#key_metric' (MONAI's REF_ID rule)."""
    b = _copy_mnist(tmp_path)

    def rewire(cfg):
        cfg["train"]["metric"] = cfg["train"].pop("key_metric")
        cfg["train"]["trainer"]["key_train_metric"] = "@train#metric"

    _edit(b / "configs" / "train.json", rewire)
    assert "train_key_metric" in _properties(b)


def test_ill_validation_interval_not_the_val_interval_property(tmp_path):
    b = _copy_mnist(tmp_path)

    def literal(cfg):
        for h in cfg["train"]["handlers"]:
            if h.get("_target_") == "ValidationHandler":
                h["interval"] = "@epochs"

    _edit(b / "configs" / "train.json", literal)
    assert "val_interval" in _properties(b)


def test_ill_required_train_property_missing(tmp_path):
    b = _copy_mnist(tmp_path)

    def drop(cfg):
        cfg["train"]["trainer"]["inferer"] = {"_target_": "SimpleInferer"}
        del cfg["train"]["inferer"]

    _edit(b / "configs" / "train.json", drop)
    text = _properties(b)
    assert "required id(s) ['train#inferer'] missing" in text


def test_ill_inference_without_dataset_dir(tmp_path):
    b = _copy_mnist(tmp_path)

    def drop(cfg):
        cfg["input_dir"] = cfg.pop("dataset_dir")

    _edit(b / "configs" / "inference.json", drop)
    text = _properties(b)
    assert "configs/inference.json" in text and "dataset_dir" in text


class _Unscriptable(torch.nn.Module):
    """A network TorchScript cannot compile (a data-dependent Python container of mixed types)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x):  # no annotations: scripting infers Tensor, then fails on the mixed list below
        parts = [x.flatten(1), "not a tensor"]
        return self.fc(parts[0])


def test_ill_network_not_scriptable_fails_torchscript_check(tmp_path, monkeypatch):
    """The zoo exports by scripting; a network that only traces is a finding, not a silent fallback."""
    b = _copy_mnist(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    _edit(b / "configs" / "inference.json", lambda c: c.update(network_def={"_target_": f"{__name__}._Unscriptable"}))
    report = verify_bundle(b, checks=["torchscript"], trust=True)
    assert not report.ok
    assert "by scripting failed" in "\n".join(report["torchscript"].problems)


def test_zoo_layout_needs_data_license_and_reports_missing_weights(tmp_path):
    b = _copy_mnist(tmp_path)
    report = verify_bundle(b, checks=["zoo_layout", "weights"])
    assert report.ok, report.summary()
    assert any("models/model.pt" in w for w in report["zoo_layout"].warnings)
    assert "random initialisation" in report["weights"].detail
    (b / "docs" / "data_license.txt").unlink()
    (b / "LICENSE").unlink()
    text = "\n".join(verify_bundle(b, checks=["zoo_layout"])["zoo_layout"].problems)
    assert "docs/data_license.txt: missing" in text and "LICENSE: missing" in text


def test_weights_check_names_the_weights_it_checked(tmp_path):
    from monai.bundle import ConfigParser

    b = _copy_mnist(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(b / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    (b / "models").mkdir()
    torch.save(net.state_dict(), b / "models" / "model.pt")
    report = verify_bundle(b, checks=["weights", "torchscript"], trust=True)
    assert report.ok, report.summary()
    assert report["weights"].detail.startswith("models/model.pt (sha256 ")
    assert "scripted from models/model.pt" in report["torchscript"].detail


def test_ill_config_not_formatted_as_the_zoo_pre_commit_writes_it(tmp_path):
    b = _copy_mnist(tmp_path)
    p = b / "configs" / "evaluate.json"
    p.write_text(json.dumps(json.loads(p.read_text()), indent=2, sort_keys=True))
    text = "\n".join(verify_bundle(b, checks=["json_format"])["json_format"].problems)
    assert "evaluate.json" in text and "pretty-format-json --indent=4 --no-sort-keys" in text


def _pinned() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        if "==" in d:
            name, version = d.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_metadata_versions_are_the_pinned_installed_ones(bundle):
    """Full x.y.z pins, equal to pyproject.toml's pins and to what is installed (the zoo CI pip-installs them)."""
    meta = json.loads((BUNDLES[bundle] / "configs" / "metadata.json").read_text())
    pins = _pinned()
    wanted = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    wanted.update({k.lower(): v for k, v in meta["required_packages_version"].items()})
    for name, version in wanted.items():
        assert len(version.split(".")) == 3 and "+" not in version, f"{bundle}: {name} {version} is not x.y.z"
        assert pins.get(name) == version, f"{bundle}: {name} {version} but pyproject.toml pins {pins.get(name)}"
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == version, f"{bundle}: {name} {version} but {installed} is installed"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_configs_are_formatted_as_the_zoo_pre_commit_writes_them(bundle):
    for p in sorted((BUNDLES[bundle] / "configs").glob("*.json")):
        text = p.read_text(encoding="utf-8")
        assert text == pretty_json(json.loads(text)), f"{p}: reformat with 4-space indent, key order kept"


def test_monai_bundle_load_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """``monai.bundle.load`` runs a config's ``initialize``; the bundle root must come from the config's folder."""
    import monai.bundle
    from monai.bundle import ConfigParser

    bundles = tmp_path / "bundles"
    b = _copy_mnist(bundles)
    parser = ConfigParser()
    parser.read_config(str(b / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    (b / "models").mkdir()
    torch.save(net.state_dict(), b / "models" / "model.pt")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["python"])
    with pytest.warns(UserWarning):  # MONAI's warning that configs run code stays visible
        model = monai.bundle.load(MNIST, bundle_dir=str(bundles), device="cpu")  # runs train.json
    assert list(cwd.iterdir()) == [], "monai.bundle.load wrote into the caller's working directory"
    ref = net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_prerelease_bundle_version_is_valid_metadata():
    """A release candidate (``1.0.0-rc1``) is a valid bundle version and orders before its release."""
    from tlk_components.zoo.metadata import metadata_errors, parse_version

    meta = json.loads((BUNDLES[MNIST] / "configs" / "metadata.json").read_text())
    meta["changelog"] = {"1.0.0-rc1": "release candidate", **meta["changelog"]}
    meta["version"] = "1.0.0-rc1"
    assert metadata_errors(meta) == []
    assert parse_version("1.0.0-rc1") < parse_version("1.0.0") and parse_version("1.0.0-rc1") > parse_version("0.9.9")
    meta["version"] = "1.0.0.1"
    assert any("version" in e for e in metadata_errors(meta))
