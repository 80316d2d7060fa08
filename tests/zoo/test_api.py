# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Python API: ``tlk_components.zoo.load`` and ``list_bundles_info``; nothing is written into the working directory.

End to end on the mnist bundle (the smallest): a private copy gets a ``models/model.pt`` (its ``network_def`` with
seeded random weights), is packaged, and ``zoo.load`` is called from a fresh working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tlk_components.zoo as zoo
from tests.zoo_helpers import make_fake_bundle
from tlk_components.zoo.api import BundleLoadError, default_bundle_dir
from tlk_components.zoo.package import bundle_files, package_bundle
from tlk_components.zoo.registry import list_bundles

MNIST = "mnist_mlp_classification"
FAKE = "fake_mlp_classification"


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def fresh_cwd(tmp_path, monkeypatch) -> Path:
    """A new, empty working directory, with TLK_HOME pointing elsewhere."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TLK_HOME", str(tmp_path / "tlk_home"))
    return cwd


@pytest.fixture(scope="module")
def mnist_release(tmp_path_factory) -> tuple[Path, Path]:
    """(copy of the mnist bundle with a models/model.pt, release folder with its zip and index)."""
    if MNIST not in list_bundles():
        pytest.skip(f"bundle {MNIST} not present")
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("zoo_api")
    repo_bundle = list_bundles()[MNIST]
    copy = root / "src" / MNIST
    for rel in bundle_files(repo_bundle):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_bundle / rel, copy / rel)
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    parser["bundle_root"] = str(copy)
    torch.manual_seed(7)
    net = parser.get_parsed_content("network_def", instantiate=True)
    (copy / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), copy / "models" / "model.pt")
    package_bundle(copy, root / "release", base_url=".")
    return copy, root / "release"


def _version(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def _same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_load_downloads_into_the_cache_and_returns_the_trained_network(mnist_release, fresh_cwd, tmp_path):
    copy, release = mnist_release
    expected = torch.load(copy / "models" / "model.pt", weights_only=True)
    before = _listing(fresh_cwd)
    net = zoo.load(MNIST, index=release)
    assert isinstance(net, torch.nn.Module) and not net.training
    assert _same_state(net.state_dict(), expected)
    cached = tmp_path / "tlk_home" / "bundles" / MNIST
    assert (cached / "models" / "model.pt").read_bytes() == (copy / "models" / "model.pt").read_bytes()
    # only the network was built: no demo data, outputs or logs written anywhere
    assert not (cached / "demo_data").exists() and not (cached / "eval").exists()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # the second call uses the cached copy (no index needed)
    again = zoo.load(MNIST, version=_version(copy))
    assert _same_state(again.state_dict(), expected)
    assert _listing(fresh_cwd) == before == []


def test_load_from_a_bundle_folder_and_an_explicit_dir(mnist_release, fresh_cwd, tmp_path):
    copy, release = mnist_release
    expected = torch.load(copy / "models" / "model.pt", weights_only=True)
    assert _same_state(zoo.load(copy).state_dict(), expected)  # a path: used as it is
    net = zoo.load(MNIST, index=str(release / "model_info.json"), dir=tmp_path / "mine")
    assert _same_state(net.state_dict(), expected) and (tmp_path / "mine" / MNIST / "models" / "model.pt").is_file()
    assert not (tmp_path / "tlk_home").exists()
    assert _listing(fresh_cwd) == []


def test_ill_load_untrained_bundle(tmp_path, fresh_cwd):
    b = make_fake_bundle(tmp_path / "src")
    package_bundle(b, tmp_path / "release", allow_untrained=True)
    with pytest.raises(BundleLoadError, match=rf"{FAKE} is untrained: .*models/model.pt does not exist.*Train it"):
        zoo.load(FAKE, index=tmp_path / "release")
    with pytest.raises(BundleLoadError, match="is untrained"):
        zoo.load(b)
    assert _listing(fresh_cwd) == []


def test_ill_load_not_found_and_wrong_version(tmp_path, fresh_cwd):
    with pytest.raises(BundleLoadError, match=rf"bundle '{FAKE}' is not in .*tlk_home/bundles; pass index="):
        zoo.load(FAKE)
    make_fake_bundle(tmp_path / "have", weights=True)
    assert not zoo.load(FAKE, dir=tmp_path / "have").training
    with pytest.raises(BundleLoadError, match=rf"holds {FAKE} 0.1.0, not 0.2.0; pass index= to download 0.2.0"):
        zoo.load(FAKE, dir=tmp_path / "have", version="0.2.0")
    with pytest.raises(BundleLoadError, match=r"no configs/nope.json for workflow_type='nope'"):
        zoo.load(FAKE, dir=tmp_path / "have", workflow_type="nope")
    with pytest.raises(BundleLoadError, match=r"no 'network_def_x'; this config defines \['network_def'\]"):
        zoo.load(FAKE, dir=tmp_path / "have", net_id="network_def_x")
    assert _listing(fresh_cwd) == []


def test_ill_weights_that_do_not_fit(tmp_path, fresh_cwd):
    b = make_fake_bundle(tmp_path, weights=True)
    torch.save({"other": torch.zeros(2)}, b / "models" / "model.pt")
    with pytest.raises(BundleLoadError, match=r"models/model.pt does not fit network_def of configs/inference.json"):
        zoo.load(b)


def test_default_bundle_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TLK_HOME", str(tmp_path / "h"))
    assert default_bundle_dir() == tmp_path / "h" / "bundles"
    monkeypatch.delenv("TLK_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_bundle_dir() == tmp_path / "home" / ".cache" / "tlk_components" / "bundles"
    monkeypatch.setenv("TLK_HOME", "relative/dir")
    with pytest.raises(BundleLoadError, match="TLK_HOME='relative/dir' is a relative path"):
        default_bundle_dir()


def test_list_bundles_info_index_and_local(mnist_release, fresh_cwd):
    _, release = mnist_release
    rows = zoo.list_bundles_info(release)
    assert [(r["name"], r["untrained"], r["default"], r["compatible"]) for r in rows] == [(MNIST, False, True, True)]
    assert {"version", "monai_version", "pytorch_version", "sha256", "weights_sha256", "source"} <= set(rows[0])
    assert rows[0]["monai_version"] and rows[0]["pytorch_version"]
    local = zoo.list_bundles_info()
    assert [r["name"] for r in local] == list(list_bundles())
    for r in local:
        assert {"name", "version", "monai_version", "pytorch_version", "untrained"} <= set(r)
        assert isinstance(r["untrained"], bool)
    assert _listing(fresh_cwd) == []


def test_cli_list_uses_the_same_rows_and_writes_nothing(mnist_release, tmp_path):
    _, release = mnist_release
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, TLK_NUM_THREADS="1", TLK_HOME=str(tmp_path / "home"))
    for args in (["list"], ["list", "--index", str(release)]):
        proc = subprocess.run(
            [sys.executable, "-m", "tlk_components", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        for r in zoo.list_bundles_info(release if len(args) > 1 else None):
            assert r["name"] in proc.stdout and r["version"] in proc.stdout
    assert f"{MNIST}" in proc.stdout and "* (MONAI" in proc.stdout  # the index listing marks the default pick
    assert _listing(cwd) == []
