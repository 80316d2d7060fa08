# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""mnist's seed study follows the source exercise (pixels in [0, 1], no normalisation, its optimiser settings), and
its charts are readable (labelled x axis, legend off the data, no start-up artefact of the moving average)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tlk_components.data.mnist import MNISTDataset, TensorBatchLoader, write_demo
from tlk_components.engines.handlers import reporting
from tlk_components.engines.handlers.reporting import save_bar_chart, smoothed_curve
from tlk_components.engines.trainers import seed_study
from tlk_components.engines.trainers.seed_study import SeedStudy
from tlk_components.networks.mlp import MLP

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "mnist_mlp_classification" / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_demo(tmp_path_factory.mktemp("mnist") / "data", size="tiny"))


def test_seed_study_config_uses_the_exercise_settings(tiny: Path, tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "seed_study.json")])
    parser.update({"dataset_dir": str(tiny), "output_dir": str(tmp_path), "device": "cpu"})
    # source document 002: ten [784, 32, 10] MLPs, Adam lr 0.04, one epoch, batch 32, ToTensor pixels, no shuffle
    assert parser.get_parsed_content("num_models") == 10
    assert parser.get_parsed_content("epochs") == 1
    assert parser.get_parsed_content("learning_rate") == 0.04
    assert parser.get_parsed_content("batch_size") == 32
    assert parser.get("network_def#dims") == [784, 32, 10]
    opt = parser.get_parsed_content("seed_study#optimizer_fn")(MLP(dims=[784, 32, 10]).parameters())
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 0.04
    study = parser.get_parsed_content("seed_study#study")
    for loader in (study.train_loader, study.eval_loader):
        images = loader.tensors["image"]
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0, "the exercise fed pixels in [0, 1]"
        assert float(images.max()) > 0.9  # not normalised to another range either
    assert study.train_loader.shuffle is False  # the exercise's DataLoader(shuffle=False)
    assert study.train_loader.n == len(MNISTDataset(tiny, "train", "all"))  # the whole training split
    assert (study.epochs, study.num_models, study.smoothing) == (1, 10, 25)


def test_smoothed_curve_starts_where_the_window_is_full() -> None:
    x, y = smoothed_curve([10.0, 0.0, 2.0, 4.0, 6.0], 3)
    assert x.tolist() == [2, 3, 4] and np.allclose(y, [4.0, 2.0, 4.0])
    x, y = smoothed_curve([1.0, 3.0], 25)  # shorter than the window: one average of everything
    assert x.tolist() == [1] and np.allclose(y, [2.0])
    x, y = smoothed_curve([1.0, 2.0], 1)
    assert x.tolist() == [0, 1] and y.tolist() == [1.0, 2.0]
    assert smoothed_curve([], 5)[0].size == 0


def _legend_outside_axes(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    lb, ab = legend.get_window_extent(), ax.get_window_extent()
    return lb.x0 >= ab.x1 or lb.x1 <= ab.x0 or lb.y0 >= ab.y1 or lb.y1 <= ab.y0


def test_seed_study_charts_are_readable(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    figures: dict[str, object] = {}
    saved = reporting.save_figure

    def capture(fig, path, dpi=100):
        figures[Path(path).name] = fig
        fig.canvas.draw()
        return saved(fig, path, dpi)

    monkeypatch.setattr(seed_study, "save_figure", capture)
    monkeypatch.setattr(reporting, "save_figure", capture)
    train = TensorBatchLoader(MNISTDataset(tiny, "train", "all"), batch_size=32)
    test = TensorBatchLoader(MNISTDataset(tiny, "test", "all"), batch_size=64)
    SeedStudy(
        MLP(dims=[784, 8, 10]),
        train,
        test,
        lambda p: torch.optim.Adam(p, lr=0.01),
        torch.nn.CrossEntropyLoss(),
        tmp_path,
        num_models=2,
        epochs=2,
        smoothing=5,
        xlabel="digit",
    ).run()
    curves = figures["seed_study_loss_curves.png"]
    ax = curves.axes[0]
    assert "iteration" in ax.get_xlabel() and ax.get_ylabel()
    first_x = [line.get_xdata()[0] for line in ax.get_lines()]
    assert first_x == [5, 5], "the moving average is drawn from its first full window (iteration 5) on"
    assert _legend_outside_axes(curves)
    bars = figures["seed_study_per_class_accuracy.png"]
    assert bars.axes[0].get_xlabel() == "digit" and _legend_outside_axes(bars)
    summary = json.loads((tmp_path / "seed_study.json").read_text())
    assert summary["stuck_models"] == [] and all(m["stuck"] is False for m in summary["models"])


def test_seed_study_flags_a_stuck_model(tiny: Path, tmp_path: Path) -> None:
    class Constant(torch.nn.Module):  # always predicts class 3, like a model stuck at chance
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bias.expand(x.shape[0], 10).clone()
            out[:, 3] += 100.0
            return out

    train = TensorBatchLoader(MNISTDataset(tiny, "train", "all"), batch_size=32)
    test = TensorBatchLoader(MNISTDataset(tiny, "test", "all"), batch_size=64)
    SeedStudy(Constant(), train, test, lambda p: torch.optim.SGD(p, lr=0.0), torch.nn.CrossEntropyLoss(), tmp_path,
              num_models=1).run()  # fmt: skip
    summary = json.loads((tmp_path / "seed_study.json").read_text())
    assert summary["stuck_models"] == [1] and summary["models"][0]["stuck"] is True


def test_bar_chart_legend_off_the_bars_and_x_label(tmp_path: Path, monkeypatch) -> None:
    figures = []
    saved = reporting.save_figure
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path, dpi=100: (figures.append(fig), saved(fig, path))[1])
    save_bar_chart({"a": [1.0, 1.0], "b": [1.0, 0.5]}, ["x", "y"], tmp_path / "b.png", xlabel="class")
    assert figures[0].axes[0].get_xlabel() == "class" and _legend_outside_axes(figures[0])
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
