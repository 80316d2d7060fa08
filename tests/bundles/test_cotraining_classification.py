# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""cotraining_classification through the real ``python -m monai.bundle run``: train, resume, evaluate, inference,
the labelled-only baseline, a bad dataset; plus README/metadata and train/inference config consistency.
MONAI's ConfigWorkflow properties, verify_net_in_out and TorchScript export: tests/bundles/test_cotraining_interop.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.bundle_utils import BUNDLES, run_bundle
from tlk_components.data.cotraining import write_demo
from tlk_components.utils.io import load_weights

NAME = "cotraining_classification"
CONFIGS = BUNDLES / NAME / "configs"
TINY = {"iterations": 2, "epochs": 1, "k": 10, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("cot_bundle") / "tiny", size="tiny")


@pytest.mark.slow
def test_train_resume_evaluate_inference(tiny, tmp_path):
    dirs = {"dataset_dir": str(tiny), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    proc = run_bundle(NAME, "train.json", cwd=tmp_path, **dirs, **TINY)
    assert "iteration 2/2" in proc.stdout
    models = tmp_path / "models"
    for v in (0, 1):
        assert isinstance(load_weights(models / f"model_view{v}.pt"), dict)
    assert {k.split(".")[0] for k in load_weights(models / "model.pt")} == {"view0", "view1"}
    assert json.loads((models / "classes.json").read_text()) == {str(c): c for c in range(10)}
    log = json.loads((tmp_path / "eval" / "cotraining_log.json").read_text())
    assert [h["iteration"] for h in log] == [1, 2] and log[0]["added_view0"] > 0
    assert (tmp_path / "eval" / "cotraining_accuracy.png").is_file()
    assert "val_accuracy_ensemble" in json.loads((tmp_path / "eval" / "val_metrics.json").read_text())

    # same command, one more iteration: resumes after iteration 2 instead of starting over
    proc = run_bundle(NAME, "train.json", cwd=tmp_path, **dirs, **{**TINY, "iterations": 3})
    assert "resumed from" in proc.stdout and "iteration 1/3" not in proc.stdout
    assert len(json.loads((tmp_path / "eval" / "cotraining_log.json").read_text())) == 3

    run_bundle(NAME, ["train.json", "evaluate.json"], cwd=tmp_path, **dirs, **TINY)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert set(meta["eval_metrics"]) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in meta["eval_metrics"])
    assert (tmp_path / "eval" / "test_per_class_accuracy.png").is_file()

    run_bundle(
        NAME,
        "inference.json",
        cwd=tmp_path,
        input_dir=str(tiny),
        ckpt_dir=dirs["ckpt_dir"],
        output_dir=str(tmp_path / "pred"),
        device="cpu",
    )
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 120 and all(r["pred"] in {str(c) for c in range(10)} for r in rows)


@pytest.mark.slow
def test_three_way_comparison(tiny, tmp_path):
    """train_labelled_only.json, train.json and train_supervised.json, then compare.json writes the table."""
    dirs = {"dataset_dir": str(tiny), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    for extra in ([], ["train_labelled_only.json"], ["train_supervised.json"]):
        run_bundle(NAME, ["train.json", *extra], cwd=tmp_path, **dirs, **TINY)
    logs = {
        sub: json.loads((tmp_path / "eval" / sub / "cotraining_log.json").read_text())
        for sub in ("", "labelled_only", "supervised")
    }
    assert all(h["mode"] == "labelled_only" and h["added_view0"] == 0 for h in logs["labelled_only"])
    assert all(h["mode"] == "all_labels" for h in logs["supervised"])
    assert logs["supervised"][0]["train_size_view0"] > logs["labelled_only"][0]["train_size_view0"]
    assert (tmp_path / "models" / "labelled_only" / "model.pt").is_file()
    run_bundle(NAME, ["train.json", "compare.json"], cwd=tmp_path, **dirs, **TINY)
    cmp = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    assert [r["run"] for r in cmp["runs"]] == ["labelled_only", "cotraining", "supervised"]
    assert cmp["runs"][1]["pseudo_label_accuracy"] is not None
    assert (tmp_path / "eval" / "comparison.md").is_file() and (tmp_path / "eval" / "comparison.png").is_file()


@pytest.mark.slow
def test_ill_bad_dataset_lists_every_problem(tiny, tmp_path):
    bad = Path(shutil.copytree(tiny, tmp_path / "bad"))
    next((bad / "view1" / "4").glob("*.png")).unlink()
    lines = (bad / "samples.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[2] = "ten"
    lines[1] = ",".join(cells)
    (bad / "samples.csv").write_text("\n".join(lines) + "\n")
    proc = run_bundle(
        NAME,
        "train.json",
        cwd=tmp_path,
        check=False,
        dataset_dir=str(bad),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        **TINY,
    )
    assert proc.returncode != 0
    assert "2 problem(s)" in proc.stdout and "view1 image file missing" in proc.stdout
    assert "label 'ten' is not in the class map" in proc.stdout
    assert not (tmp_path / "models" / "model_view0.pt").exists() and not (tmp_path / "models" / "model.pt").exists()


def test_inference_network_defs_match_train():
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    for key in ("network_def", "network", "view0_network", "view1_network", "in_channels"):
        assert infer[key] == train[key], key
    assert infer["preprocessing"] == train["train"]["preprocessing"]
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert infer["num_classes"] == meta["network_data_format"]["outputs"]["pred"]["num_channels"]


def test_inference_network_builds_without_trained_models(tmp_path):
    """The network_def of inference.json needs no models/ folder (tlk verify exports an untrained bundle)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    net = parser.get_parsed_content("network_def")
    assert net.eval()(torch.zeros(2, 2, 16, 8)).shape == (2, 10)  # both views stacked as channels -> ensemble
    for view in (net.view0, net.view1):
        assert view(torch.zeros(2, 1, 16, 8)).shape == (2, 10)
    assert not (tmp_path / "models").exists()
