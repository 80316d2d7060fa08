# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Classification engine pieces and the seed study, checked against plain reference computations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix

from tlk_components.data.mnist import MNISTDataset, TensorBatchLoader, write_demo
from tlk_components.engines.evaluators.classification import ClassificationReport, confusion_matrix, per_class_accuracy
from tlk_components.engines.handlers.progress import ProgressBarHandler
from tlk_components.engines.handlers.weights import WeightLoader
from tlk_components.engines.inference.classification import PredictionsCSVWriter, write_predictions_csv
from tlk_components.engines.trainers.seed_study import SeedStudy, reinitialize
from tlk_components.networks.mlp import MLP
from tlk_components.utils.errors import ConfigError, DatasetError


def _reference_per_class(pred: torch.Tensor, labels: torch.Tensor, n: int) -> list[float]:
    """The source document's loop: correct of class i / samples of class i."""
    correct, total = [0] * n, [0] * n
    for p, y in zip(pred.tolist(), labels.tolist(), strict=True):
        total[y] += 1
        correct[y] += int(p == y)
    return [c / t if t else 0.0 for c, t in zip(correct, total, strict=True)]


def test_per_class_accuracy_equals_reference_loop():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 10, generator=g), torch.randint(0, 10, (500,), generator=g)
    labels[labels == 7] = 3  # class 7 without samples -> 0, not NaN
    engine = Engine(lambda e, b: b)
    cm = ConfusionMatrix(num_classes=10)
    per_class_accuracy(cm).attach(engine, "per_class")
    per_class_accuracy(cm, average=True).attach(engine, "mean_class")
    cm.attach(engine, "cm")
    engine.run([(logits[i : i + 64], labels[i : i + 64]) for i in range(0, 500, 64)])
    ref = _reference_per_class(logits.argmax(1), labels, 10)
    assert engine.state.metrics["per_class"].tolist() == pytest.approx(ref, abs=1e-12)
    assert engine.state.metrics["mean_class"] == pytest.approx(np.mean(ref), abs=1e-12)
    assert int(engine.state.metrics["cm"].sum()) == 500  # counted once although attached twice


def test_confusion_matrix_equals_sklearn(tmp_path):
    from sklearn.metrics import confusion_matrix as sk_cm

    ds = MNISTDataset(write_demo(tmp_path / "d", size="tiny"), "test")
    torch.manual_seed(0)
    net = MLP()
    net.train()
    cm = confusion_matrix(net, TensorBatchLoader(ds, batch_size=16), num_classes=10)
    assert net.training, "mode restored"
    with torch.no_grad():
        pred = net.eval()(ds.images).argmax(1)
    np.testing.assert_array_equal(cm.numpy(), sk_cm(ds.labels.numpy(), pred.numpy(), labels=range(10)))


def test_predictions_csv(tmp_path):
    probs = torch.tensor([[0.1, 0.9], [0.7, 0.3]])
    path = write_predictions_csv(tmp_path / "p.csv", ["a.png", "b.png"], probs, class_names=["cat", "dog"])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["image", "prediction", "probability", "prob_cat", "prob_dog"]
    assert rows[1][:3] == ["a.png", "dog", "0.900000"] and rows[2][:2] == ["b.png", "cat"]
    with pytest.raises(ValueError, match="1 names but probabilities of shape"):
        write_predictions_csv(tmp_path / "q.csv", ["a"], probs)


def test_predictions_writer_handler(tmp_path):
    batches = [{"image": torch.zeros(2, 3), "name": ["x", "y"]}, {"image": torch.zeros(1, 3), "name": ["z"]}]
    logits = iter([torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([[1.0, 1.0]])])
    engine = Engine(lambda e, b: {"pred": next(logits)})
    PredictionsCSVWriter(tmp_path).attach(engine)
    engine.run(batches)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert [r["image"] for r in rows] == ["x", "y", "z"] and [r["prediction"] for r in rows] == ["0", "1", "0"]
    assert float(rows[2]["probability"]) == pytest.approx(0.5)


def test_classification_report_pngs(tmp_path):
    engine = Engine(lambda e, b: b)

    @engine.on(Events.COMPLETED)
    def _metrics(e):
        e.state.metrics.update({"per_class_accuracy": torch.tensor([0.5, 1.0]), "confusion_matrix": torch.eye(2)})

    ClassificationReport(tmp_path, class_names=["a", "b"]).attach(engine)
    engine.run([0])
    for name in ("per_class_accuracy.png", "confusion_matrix.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    bad = Engine(lambda e, b: b)
    ClassificationReport(tmp_path).attach(bad)
    with pytest.raises(KeyError, match="per_class_accuracy"):
        bad.run([0])


def test_weight_loader(tmp_path):
    src, dst = MLP(dims=[4, 3, 2]), MLP(dims=[4, 3, 2])
    torch.save(src.state_dict(), tmp_path / "model.pt")
    WeightLoader(tmp_path / "model.pt", dst)()
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    WeightLoader(tmp_path / "ckpt.pt", MLP(dims=[4, 3, 2]), key="model")()
    with pytest.raises(DatasetError, match="missing.pt: checkpoint not found; train the bundle first"):
        WeightLoader(tmp_path / "missing.pt", dst)()
    with pytest.raises(ConfigError, match="weights do not fit the network"):
        WeightLoader(tmp_path / "model.pt", MLP(dims=[4, 5, 2]))()


def test_progress_bar_handler_runs():
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    ProgressBarHandler(every=2).attach(engine)
    engine.run(list(range(5)), max_epochs=2)
    assert engine.state.iteration == 10
    with pytest.raises(ConfigError, match="every=0"):
        ProgressBarHandler(every=0)


def test_reinitialize_equals_fresh_construction():
    template = MLP(dims=[6, 4, 3])
    torch.manual_seed(5)
    fresh = MLP(dims=[6, 4, 3])
    again = reinitialize(template, 5)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters(), strict=True))
    assert not torch.equal(reinitialize(template, 6).layers[0].weight, again.layers[0].weight)


def test_seed_study_shared_order_different_seeds(tmp_path):
    data = write_demo(tmp_path / "d", size="tiny")
    train = TensorBatchLoader(MNISTDataset(data, "train"), batch_size=32, shuffle=True, seed=0)
    test = TensorBatchLoader(MNISTDataset(data, "test"), batch_size=64)
    seen: list[list[int]] = []
    orig_iter = TensorBatchLoader.__iter__

    def spy(self):  # records each pass's label order (ignite may stop a pass before exhausting it)
        order: list[int] = []
        if self is train:
            seen.append(order)
        for b in orig_iter(self):
            order += b["label"].tolist()
            yield b

    TensorBatchLoader.__iter__ = spy
    try:
        study = SeedStudy(
            MLP(dims=[784, 16, 10]),
            train,
            test,
            lambda p: torch.optim.Adam(p, lr=0.01),
            torch.nn.CrossEntropyLoss(),
            tmp_path / "out",
            num_models=3,
            first_seed=7,
            epochs=2,
        )
        results = study.run()
    finally:
        TensorBatchLoader.__iter__ = orig_iter
    assert [r["seed"] for r in results] == [7, 8, 9]
    assert len(seen) == 6 and seen[0] == seen[2] == seen[4] and seen[1] == seen[3] == seen[5] and seen[0] != seen[1]
    assert len({round(r["last_loss"], 6) for r in results}) == 3, "different seeds give different models"
    summary = json.loads((tmp_path / "out" / "seed_study.json").read_text())
    assert summary["num_models"] == 3 and len(summary["models"][0]["per_class_accuracy"]) == 10
    assert summary["accuracy_min"] <= summary["accuracy_mean"] <= summary["accuracy_max"]
    for name in ("seed_study_loss_curves.png", "seed_study_per_class_accuracy.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="num_models=0"):
        SeedStudy(MLP(), train, test, torch.optim.Adam, torch.nn.CrossEntropyLoss(), tmp_path, num_models=0)
