# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""End to end with real parts: train mnist (tiny data) -> package -> serve over HTTP -> download -> same predictions.

Every step uses the real entry points: ``python -m monai.bundle run`` for training and inference (each from a
working directory outside the bundle), :func:`package_bundle`, a ``http.server`` on 127.0.0.1 started and stopped
by the test, :func:`download_bundle` into a fresh folder, and ``tlk_components.zoo.load`` on the downloaded copy.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tlk_components.zoo as zoo
from tests.zoo_helpers import serve_dir
from tlk_components.data.registry import get_data_module
from tlk_components.zoo.download import download_bundle, list_index
from tlk_components.zoo.package import bundle_files, package_bundle
from tlk_components.zoo.registry import list_bundles
from tlk_components.zoo.verify import verify_bundle

BUNDLE = "mnist_mlp_classification"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BUNDLE not in list_bundles(), reason=f"bundle {BUNDLE} not present"),
]


def _run(config: Path, cwd: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *overrides]
    env = dict(os.environ, TLK_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{(proc.stdout + proc.stderr)[-6000:]}"


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_package_serve_download_infer(tmp_path, monkeypatch):
    # a private copy of the bundle, so training does not write into the repository
    original = tmp_path / "mine" / BUNDLE
    repo_bundle = list_bundles()[BUNDLE]
    for rel in bundle_files(repo_bundle):
        (original / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_bundle / rel, original / rel)
    data = get_data_module(BUNDLE).write_demo(tmp_path / "data", size="tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run(original / "configs" / "train.json", elsewhere, "--dataset_dir", str(data), "--epochs", "1")
    assert (original / "models" / "model.pt").is_file()

    release = tmp_path / "release"
    entry = package_bundle(original, release, base_url=".")
    with serve_dir(release) as url:
        listing = list_index(f"{url}/model_info.json")
        fresh = download_bundle(BUNDLE, f"{url}/model_info.json", tmp_path / "fresh", timeout=30)
    assert f"{entry['version']}*" in listing
    assert fresh == tmp_path / "fresh" / BUNDLE
    assert (fresh / "models" / "model.pt").read_bytes() == (original / "models" / "model.pt").read_bytes()
    assert not (fresh / "models" / "checkpoint_last.pt").exists() and not (fresh / "eval").exists()

    # a downloaded copy gets the file checks only, unless trusted (its configs run code); trusted, it passes every
    # check, TorchScript export of the trained weights included
    assert verify_bundle(fresh).untrusted == ["net_in_out", "torchscript", "properties"]
    with pytest.warns(UserWarning, match="Only do this for bundles from a source you trust"):
        report = verify_bundle(fresh, trust=True)
    assert report.ok, report.summary()
    assert "from models/model.pt" in report["torchscript"].detail

    images = sorted(data.glob("t10k-images*"))[0]
    other_cwd = tmp_path / "another_directory"
    other_cwd.mkdir()
    for bundle, out in ((original, tmp_path / "pred_original"), (fresh, tmp_path / "pred_downloaded")):
        _run(bundle / "configs" / "inference.json", other_cwd, "--input_dir", str(images), "--output_dir", str(out))
    before = _predictions(tmp_path / "pred_original" / "predictions.csv")
    after = _predictions(tmp_path / "pred_downloaded" / "predictions.csv")
    assert len(before) == 100  # the tiny test split
    assert after == before

    # the Python API loads the same trained network from the downloaded copy, writing nothing where it is called
    api_cwd = tmp_path / "api_cwd"
    api_cwd.mkdir()
    monkeypatch.chdir(api_cwd)
    net = zoo.load(BUNDLE, dir=tmp_path / "fresh")
    trained = torch.load(original / "models" / "model.pt", weights_only=True)
    assert not net.training and all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    assert list(api_cwd.iterdir()) == []

    # MONAI's own loader too: monai.bundle.load builds the network from train.json (running its initialize);
    # whatever it writes stays inside the downloaded bundle, never in the caller's directory or elsewhere
    import monai.bundle

    def outside_fresh() -> set[Path]:
        return {p for p in tmp_path.rglob("*") if tmp_path / "fresh" not in p.parents}

    before_load = outside_fresh()
    monkeypatch.setattr(sys, "argv", ["python"])  # no --config_file: the bundle root must come from the workflow
    with pytest.warns(UserWarning):  # MONAI's warning that a bundle's configs run code stays visible
        mnet = monai.bundle.load(BUNDLE, bundle_dir=str(tmp_path / "fresh"), device="cpu")
    assert all(torch.equal(v, trained[k]) for k, v in mnet.state_dict().items())
    assert list(api_cwd.iterdir()) == [] and outside_fresh() == before_load
