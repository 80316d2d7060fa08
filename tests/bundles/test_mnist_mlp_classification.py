# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""mnist_mlp_classification end to end on the tiny demo digits, through ``python -m monai.bundle``.

Train (validation, best checkpoint, resumable last checkpoint), resume, evaluate (metrics.json holds every
``eval_metrics`` key; values recomputed here from model.pt), inference on an IDX file and on a folder of PNGs,
the seed study, bad input, and MONAI's ``verify_net_in_out`` / ``ckpt_export`` on the trained weights.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bundle_utils import BUNDLES, REPO, run_bundle
from tlk_components.data import mnist
from tlk_components.networks.mlp import MLP

BUNDLE = "mnist_mlp_classification"
CONFIGS = BUNDLES / BUNDLE / "configs"
MEAN, STD = 0.1307, 0.3081


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mnist_bundle")
    data = mnist.write_demo(root / "data", size="tiny", seed=0)
    run_bundle(BUNDLE, "train.json", bundle_root=root, dataset_dir=data, epochs=2)
    return {"root": root, "data": Path(data), "models": root / "models", "eval": root / "eval"}


def _predict(model_pt: Path, images: np.ndarray) -> torch.Tensor:
    net = MLP()
    net.load_state_dict(torch.load(model_pt, weights_only=True))
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255.0 - MEAN) / STD
    with torch.no_grad():
        return net.eval()(x)


def test_configs_parse_and_inference_network_equals_training_network():
    configs = {f.name: json.loads(f.read_text()) for f in CONFIGS.glob("*.json")}
    assert {"metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"} <= set(configs)
    assert configs["inference.json"]["network_def"] == configs["train.json"]["network_def"]
    assert configs["inference.json"]["preprocessing"] == configs["train.json"]["train"]["preprocessing"]


@pytest.mark.slow
def test_train_writes_checkpoints_curves_and_logs(work):
    assert (work["models"] / "model.pt").is_file() and (work["models"] / "checkpoint_last.pt").is_file()
    assert (work["eval"] / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert list(work["eval"].glob("events.out.tfevents.*")), "TensorBoard logs"
    last = torch.load(work["models"] / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and {"model", "optimizer", "lr_scheduler"} <= set(last)
    assert 0.0 < last["best_metric"] <= 1.0
    assert not (BUNDLES / BUNDLE / "models").exists(), "nothing is written into the bundle folder"


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(work):
    before = torch.load(work["models"] / "checkpoint_last.pt", weights_only=True)
    out = run_bundle(BUNDLE, "train.json", bundle_root=work["root"], dataset_dir=work["data"], epochs=3).stdout
    assert "resumed from" in out and "at epoch 2" in out
    assert "Epoch [3/3]" in out and "Epoch [1/3]" not in out, "only the missing epoch runs"
    after = torch.load(work["models"] / "checkpoint_last.pt", weights_only=True)
    assert after["trainer"]["epoch"] == 3 and after["trainer"]["iteration"] == before["trainer"]["iteration"] * 3 // 2
    assert after["best_metric"] >= before["best_metric"]


@pytest.mark.slow
def test_evaluate_writes_every_eval_metric(work):
    run_bundle(BUNDLE, ["train.json", "evaluate.json"], bundle_root=work["root"], dataset_dir=work["data"])
    metrics = json.loads((work["eval"] / "metrics.json").read_text())
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert set(meta["eval_metrics"]) <= set(metrics)
    images, labels = mnist.load_split(work["data"], "test")
    pred = _predict(work["models"] / "model.pt", images).argmax(1).numpy()
    assert metrics["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=1e-12)
    per_class = [float((pred[labels == c] == c).mean()) for c in range(10)]
    assert metrics["per_class_accuracy"] == pytest.approx(per_class, abs=1e-12)
    assert metrics["mean_class_accuracy"] == pytest.approx(np.mean(per_class), abs=1e-12)
    assert np.array(metrics["confusion_matrix"]).sum() == 100
    for png in ("per_class_accuracy.png", "confusion_matrix.png"):
        assert (work["eval"] / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_inference_on_idx_file_and_png_folder(work, tmp_path):
    from PIL import Image

    images, _ = mnist.load_split(work["data"], "test")
    expected = _predict(work["models"] / "model.pt", images).argmax(1).tolist()
    run_bundle(
        BUNDLE,
        "inference.json",
        bundle_root=work["root"],
        input_dir=work["data"] / "t10k-images-idx3-ubyte.gz",
        output_dir=tmp_path / "idx",
    )
    rows = list(csv.DictReader((tmp_path / "idx" / "predictions.csv").open()))
    assert [r["image"] for r in rows] == [f"t10k-images-idx3-ubyte.gz#{i}" for i in range(100)]
    assert [int(r["prediction"]) for r in rows] == expected

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in (4, 0, 17):
        Image.fromarray(images[i]).save(pngs / f"digit_{i:02d}.png")
    run_bundle(BUNDLE, "inference.json", bundle_root=work["root"], input_dir=pngs, output_dir=tmp_path / "png")
    rows = list(csv.DictReader((tmp_path / "png" / "predictions.csv").open()))
    assert [r["image"] for r in rows] == ["digit_00.png", "digit_04.png", "digit_17.png"]
    assert [int(r["prediction"]) for r in rows] == [expected[0], expected[4], expected[17]]
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in range(10)) - 1) < 1e-4 for r in rows)

    (pngs / "broken.png").write_bytes(b"not a png")
    bad = run_bundle(
        BUNDLE, "inference.json", bundle_root=work["root"], input_dir=pngs, output_dir=tmp_path / "bad", check=False
    )
    assert bad.returncode != 0 and "broken.png: not a readable image" in bad.stdout
    assert not (tmp_path / "bad" / "predictions.csv").exists()


def _monai_bundle(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=REPO / "tests", capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_verify_net_in_out_and_torchscript_export(work):
    meta, inference = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    _monai_bundle("verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", inference)
    ts = work["models"] / "model.ts"
    _monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(work["models"] / "model.pt"),
        "--meta_file",
        meta,
        "--config_file",
        inference,
    )
    scripted = torch.jit.load(str(ts))
    images, _ = mnist.load_split(work["data"], "test")
    x = (torch.from_numpy(images[:8]).float().unsqueeze(1) / 255.0 - MEAN) / STD
    assert torch.allclose(scripted(x), _predict(work["models"] / "model.pt", images[:8]), atol=1e-6)


@pytest.mark.slow
def test_seed_study(work, tmp_path):
    run_bundle(
        BUNDLE,
        ["train.json", "seed_study.json"],
        bundle_root=work["root"],
        dataset_dir=work["data"],
        output_dir=tmp_path,
        num_models=2,
    )
    summary = json.loads((tmp_path / "seed_study" / "seed_study.json").read_text())
    assert [m["seed"] for m in summary["models"]] == [0, 1] and summary["epochs"] == 1
    for png in ("seed_study_loss_curves.png", "seed_study_per_class_accuracy.png"):
        assert (tmp_path / "seed_study" / png).is_file()


@pytest.mark.slow
def test_ill_hyperparameter_and_dataset_stop_before_compute(work, tmp_path):
    bad = run_bundle(BUNDLE, "train.json", bundle_root=tmp_path, dataset_dir=work["data"], epochs=-1, check=False)
    assert bad.returncode != 0 and "epochs=-1: expected an integer >= 1; set e.g. --epochs 1" in bad.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_bundle(BUNDLE, "train.json", bundle_root=tmp_path, dataset_dir=empty, check=False)
    assert bad.returncode != 0 and "4 problem(s)" in bad.stdout and "t10k-labels-idx1-ubyte: missing" in bad.stdout
    assert not (tmp_path / "models").exists()
