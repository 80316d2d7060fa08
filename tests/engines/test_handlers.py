# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Unit tests of the shared ignite handlers: atomic checkpoints, resume, metrics.json, plots."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from tlk_components.engines.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromLast
from tlk_components.engines.handlers.reporting import LossCurvePlotter, MetricsJsonWriter, moving_average, to_jsonable


def _trainer(net, opt):
    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return Engine(step)


def test_checkpoint_saves_best_and_last_and_resume_continues(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = _trainer(net, opt)
    evaluator = Engine(lambda e, b: None)
    scores = iter([0.5, 0.9, 0.7])

    @evaluator.on(Events.COMPLETED)
    def _metric(engine):
        engine.state.metrics["acc"] = next(scores)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    saver = AtomicCheckpointSaver(tmp_path, {"model": net, "optimizer": opt}, key_metric_name="acc", trainer=trainer)
    saver.attach(evaluator)
    data = [torch.randn(4, 2) for _ in range(3)]
    trainer.run(data, max_epochs=2)
    best_after_epoch2 = {k: v.clone() for k, v in net.state_dict().items()}
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint_last.pt").is_file()
    assert saver.best == pytest.approx(0.9)
    model_pt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(model_pt["weight"], best_after_epoch2["weight"])

    # a new process: fresh objects resume at epoch 2 and run only epoch 3
    net2 = torch.nn.Linear(2, 1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1)
    trainer2 = _trainer(net2, opt2)
    epochs_run = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    saver2 = AtomicCheckpointSaver(
        tmp_path, {"model": net2, "optimizer": opt2}, save_key_metric=False, trainer=trainer2
    )
    saver2.attach(trainer2)
    ResumeFromLast(tmp_path, {"model": net2, "optimizer": opt2}, saver=saver2).attach(trainer2)
    trainer2.run(data, max_epochs=3)
    assert epochs_run == [3]
    assert saver2.best == pytest.approx(0.9)


def test_resume_restores_best_metric_without_saver_reference(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [torch.randn(4, 2)]

    def run(scores, max_epochs):
        trainer = _trainer(net, opt)
        evaluator = Engine(lambda e, b: None)
        it = iter(scores)
        evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(acc=next(it)))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
        saver = AtomicCheckpointSaver(tmp_path, {"model": net}, key_metric_name="acc", trainer=trainer)
        saver.attach(evaluator)
        ResumeFromLast(tmp_path, {"model": net}).attach(trainer)
        trainer.run(data, max_epochs=max_epochs)
        return saver

    run([0.9], 1)
    best_weights = torch.load(tmp_path / "model.pt", weights_only=True)["weight"].clone()
    saver = run([0.4], 2)  # resumed epoch 2 is worse: model.pt must keep the epoch-1 weights
    assert saver.best == pytest.approx(0.9)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], best_weights)


def test_ill_checkpoint_needs_model(tmp_path):
    with pytest.raises(ValueError, match="save_dict needs a 'model' entry"):
        AtomicCheckpointSaver(tmp_path, {"net": torch.nn.Linear(1, 1)})


def test_metrics_json_writer_checks_keys(tmp_path):
    ev = Engine(lambda e, b: None)

    @ev.on(Events.COMPLETED)
    def _m(engine):
        engine.state.metrics.update({"accuracy": torch.tensor(0.5), "per_class": torch.tensor([1.0, float("nan")])})

    MetricsJsonWriter(tmp_path, keys=["accuracy"]).attach(ev)
    ev.run([0])
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": 0.5, "per_class": [1.0, None]}
    ev2 = Engine(lambda e, b: None)
    MetricsJsonWriter(tmp_path, keys=["mean_dice"]).attach(ev2)
    with pytest.raises(KeyError, match="mean_dice"):
        ev2.run([0])


def test_loss_curve_png(tmp_path):
    net = torch.nn.Linear(2, 1)
    trainer = _trainer(net, torch.optim.SGD(net.parameters(), lr=0.1))
    LossCurvePlotter(tmp_path, smoothing=2).attach(trainer)
    trainer.run([torch.randn(4, 2) for _ in range(3)], max_epochs=1)
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_moving_average_and_jsonable():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert to_jsonable({"a": torch.tensor([1.0]), 2: float("inf")}) == {"a": [1.0], "2": None}


def test_loss_curve_every_n_epochs_still_draws_at_the_end(tmp_path):
    net = torch.nn.Linear(2, 1)
    trainer = _trainer(net, torch.optim.SGD(net.parameters(), lr=0.1))
    plotter = LossCurvePlotter(tmp_path, every_n_epochs=10)
    plotter.attach(trainer)
    drawn = []
    orig = plotter._plot
    plotter._plot = lambda e: drawn.append(e.state.epoch) or orig(e)
    trainer.remove_event_handler(orig, Events.COMPLETED)
    trainer.add_event_handler(Events.COMPLETED, plotter._plot)
    trainer.run([torch.randn(4, 2)], max_epochs=3)
    assert drawn == [3]
    assert (tmp_path / "loss_curve.png").is_file()
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        LossCurvePlotter(tmp_path, every_n_epochs=0)
