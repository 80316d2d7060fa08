# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""cotraining_classification as a MONAI Model Zoo citizen: one ``network_def`` (``TwoViewClassifier``) and one
``models/model.pt``; MONAI's ``ConfigWorkflow`` properties, ``verify_net_in_out`` and TorchScript export; train
writes model.pt, inference runs from model.pt alone."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from tlk_components.data.cotraining import write_demo
from tlk_components.networks.small_cnn import SmallCNN, build_view_network
from tlk_components.networks.two_view import TwoViewClassifier, ensemble_probabilities, two_view_state_dict
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import load_weights

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "cotraining_classification"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TINY = {"iterations": 1, "epochs": 1, "k": 10, "batch_size": 16, "device": "cpu", "num_threads": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("cot_interop") / "tiny", size="tiny")


@pytest.fixture
def keep_logging():
    """The bundle's logging.conf replaces the root logger's handlers; put them back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _workflow(config: str, workflow_type: str, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(META),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **override,
    )
    wf.initialize()
    return wf


def _inference_network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    return parser.get_parsed_content("network_def")


# ------------------------------------------------------------------------------------------ the two-view network


def test_two_view_forward_is_mean_of_view_softmax():
    torch.manual_seed(0)
    net = TwoViewClassifier(
        view0=SmallCNN(channels=(4, 8)), view1=SmallCNN(channels=(4, 8), in_channels=2), view_channels=(1, 2)
    ).eval()
    x = torch.rand(3, 3, 16, 8)
    p0 = torch.softmax(net.view0(x[:, :1]), dim=1)
    p1 = torch.softmax(net.view1(x[:, 1:]), dim=1)
    out = net(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert torch.allclose(out, (p0 + p1) / 2) and torch.allclose(out.sum(1), torch.ones(3))
    assert torch.equal(ensemble_probabilities(p0, p1).argmax(1), (p0 + p1).argmax(1))
    with pytest.raises(ValueError, match=r"B x 3 x H x W .*got shape \[3, 2, 16, 8\]"):
        net(x[:, :2])


def test_two_view_scripts_and_matches_eager():
    for name in ("small_cnn", "resnet18"):
        net = TwoViewClassifier(view0=build_view_network("small_cnn"), view1=build_view_network(name)).eval()
        scripted = torch.jit.script(net)
        x = torch.rand(2, 2, 16, 8)
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
        with pytest.raises(Exception, match="stacked as channels"):
            scripted(torch.rand(2, 1, 16, 8))


def test_two_view_state_dict_loads_from_view_weights():
    views = [SmallCNN(channels=(4, 8)) for _ in range(2)]
    net = TwoViewClassifier(view0=SmallCNN(channels=(4, 8)), view1=SmallCNN(channels=(4, 8)))
    net.load_state_dict(two_view_state_dict(views[0].state_dict(), views[1].state_dict()))
    assert torch.equal(net.view1.head[2].weight, views[1].head[2].weight)


def test_ill_two_view_arguments():
    cnn = SmallCNN()
    with pytest.raises(ConfigError, match="same module"):
        TwoViewClassifier(view0=cnn, view1=cnn)
    with pytest.raises(ConfigError, match="view1: expected a torch.nn.Module"):
        TwoViewClassifier(view0=cnn, view1="small_cnn")
    with pytest.raises(ConfigError, match=r"view_channels=\[1, 1, 1\]"):
        TwoViewClassifier(view0=cnn, view1=SmallCNN(), view_channels=[1, 1, 1])
    with pytest.raises(ConfigError, match=r"view_channels\[1\]=0"):
        TwoViewClassifier(view0=cnn, view1=SmallCNN(), view_channels=(1, 0))


# ------------------------------------------------------------------------------------------ MONAI bundle checks


def test_check_properties_train_and_infer(tiny, tmp_path, keep_logging):
    dirs = {"dataset_dir": str(tiny), "output_dir": str(tmp_path / "out"), "ckpt_dir": str(tmp_path / "models")}
    train = _workflow("train.json", "train", **dirs, device="cpu")
    assert train.check_properties() == []
    assert train.max_epochs == 10 and train.trainer.max_epochs == 10
    assert train.train_dataset is train.trainer.dataset and train.train_inferer is train.trainer.inferer
    assert train.train_dataset[0]["image"].shape == (2, 16, 8)
    infer = _workflow("inference.json", "infer", **dirs, device="cpu")
    assert infer.check_properties() == []
    assert isinstance(infer.network_def, TwoViewClassifier)
    assert infer.evaluator.dataset is infer.dataset and infer.evaluator.inferer is infer.inferer
    assert len(infer.dataset) == 120 and infer.dataset.root == tiny


def test_verify_net_in_out_and_scripted_export(tmp_path):
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE)
    )
    meta = json.loads(META.read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 2 and set(image["channel_def"]) == {"0", "1"}
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "probabilities" and pred["spatial_shape"] == [1, pred["num_channels"]]
    torch.manual_seed(1)
    net = _inference_network().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(META),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(BUNDLE),
        use_trace=False,
    )
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(4, image["num_channels"], *image["spatial_shape"])
    with torch.no_grad():
        assert torch.allclose(ts(x), net(x), atol=1e-6)


def test_train_writes_model_pt_and_inference_needs_only_it(tiny, tmp_path, keep_logging):
    models = tmp_path / "models"
    train = _workflow(
        "train.json", "train", dataset_dir=str(tiny), ckpt_dir=str(models), output_dir=str(tmp_path / "eval"), **TINY
    )
    train.run()
    train.finalize()
    state = load_weights(models / "model.pt")
    net = _inference_network()
    net.load_state_dict(state)
    for v in (0, 1):
        view = load_weights(models / f"model_view{v}.pt")
        assert all(torch.equal(state[f"view{v}.{k}"], t) for k, t in view.items())
    assert "val_accuracy_ensemble" in json.loads((tmp_path / "eval" / "val_metrics.json").read_text())

    only = tmp_path / "only_model_pt"
    only.mkdir()
    for name in ("model.pt", "classes.json"):
        shutil.copy(models / name, only / name)
    infer = _workflow(
        "inference.json",
        "infer",
        input_dir=str(tiny),
        ckpt_dir=str(only),
        output_dir=str(tmp_path / "pred"),
        device="cpu",
        num_threads=1,
    )
    infer.run()
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 120 and rows[0]["view0"].startswith("view0/")
    assert all(r["pred"] in {str(c) for c in range(10)} and 0.1 <= float(r["confidence"]) <= 1 for r in rows)
