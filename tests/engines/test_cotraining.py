# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The co-training engine on the tiny demo: exchange, pool shrink, clean stops, resume, model.pt, evaluation,
inference, the two-view dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureType, LoadImage, ScaleIntensityRange
from monai.utils import set_determinism

from tlk_components.data.cotraining import TwoViewSamples, load_splits, write_demo
from tlk_components.engines.evaluators.cotraining import CoTrainingEvaluator
from tlk_components.engines.handlers.training import NonFiniteLossError
from tlk_components.engines.inference.cotraining import CoTrainingPredictor
from tlk_components.engines.trainers.cotraining import CoTrainer, TwoViewDataset
from tlk_components.networks.small_cnn import SmallCNN, build_view_network
from tlk_components.networks.two_view import TwoViewClassifier
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import load_weights

PRE = Compose(
    [
        LoadImage(image_only=True, ensure_channel_first=True, reader="PILReader", reverse_indexing=False),
        ScaleIntensityRange(a_min=0, a_max=255, b_min=0, b_max=1, clip=True),
        EnsureType(dtype=torch.float32, track_meta=False),
    ]
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("cot_engine") / "tiny", size="tiny")


def _trainer(splits, tmp: Path, lr: float = 3e-3, channels: tuple[int, ...] = (8, 16), **kw) -> CoTrainer:
    set_determinism(seed=0)
    nets = [SmallCNN(channels=channels) for _ in range(2)]
    opts = [torch.optim.Adam(n.parameters(), lr=lr) for n in nets]
    scheds = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1) for o in opts]
    args = {
        "splits": splits,
        "dataset": TwoViewDataset(splits.samples, PRE),
        "networks": nets,
        "optimizers": opts,
        "lr_schedulers": scheds,
        "ckpt_dir": tmp / "models",
        "output_dir": tmp / "eval",
        "iterations": 2,
        "max_epochs": 1,
        "k": 10,
        "batch_size": 16,
        "progress": False,
    }
    args.update(kw)
    return CoTrainer(**args)


def test_exchange_grows_train_sets_and_shrinks_pool(tiny, tmp_path):
    splits = load_splits(tiny)
    tr = _trainer(splits, tmp_path, iterations=3)
    hist = tr.run()
    assert [h["iteration"] for h in hist] == [1, 2, 3]
    pool, size0, size1 = len(splits.unlabelled), len(splits.train), len(splits.train)
    for h in hist[:2]:  # exchanges after iterations 1 and 2; none after the last
        assert 0 < h["added_view0"] <= 10 and 0 < h["added_view1"] <= 10
        size0, size1 = size0 + h["added_view0"], size1 + h["added_view1"]
        assert h["train_size_view0"] == size0 and h["train_size_view1"] == size1
        assert h["pool_size"] < pool
        pool = h["pool_size"]
        assert 0.0 <= h["pseudo_label_accuracy"] <= 1.0
    assert hist[2]["added_view0"] == hist[2]["added_view1"] == 0 and hist[2]["pool_size"] == pool
    # pseudo-labelled samples came from the pool, and what left the pool is in a training set
    used = set(splits.unlabelled) - set(tr.pool)
    for v in (0, 1):
        pseudo = set(tr.train_ids[v][tr.train_pseudo[v]].tolist())
        assert pseudo <= used and not pseudo & set(tr.pool.tolist())
    assert used == set(tr.train_ids[0][tr.train_pseudo[0]]) | set(tr.train_ids[1][tr.train_pseudo[1]])
    # files: best model per view (weights only), both as the two-view network's model.pt, resumable checkpoint,
    # log, plot, TensorBoard
    views = [load_weights(tmp_path / "models" / f"model_view{v}.pt") for v in (0, 1)]
    both = load_weights(tmp_path / "models" / "model.pt")
    assert set(both) == {f"view{v}.{k}" for v in (0, 1) for k in views[v]}
    assert all(torch.equal(both[f"view{v}.{k}"], t) for v in (0, 1) for k, t in views[v].items())
    net = _two_view()
    net.load_state_dict(both)
    assert load_weights(tmp_path / "models" / "checkpoint_last.pt")["iteration"] == 3
    log = json.loads((tmp_path / "eval" / "cotraining_log.json").read_text())
    assert len(log) == 3 and {"val_accuracy_ensemble", "conflicts", "pool_size"} <= set(log[0])
    assert (tmp_path / "eval" / "cotraining_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "cotraining_log.csv").read_text().startswith("iteration,")
    assert list((tmp_path / "eval" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_after_last_iteration(tiny, tmp_path):
    splits = load_splits(tiny)
    first = _trainer(splits, tmp_path, iterations=1).run()
    again = _trainer(splits, tmp_path, iterations=2)
    hist = again.run()
    assert len(hist) == 2 and hist[0] == json.loads(json.dumps(first[0]))
    assert len(again.pool) == hist[1]["pool_size"]
    # a finished run is not redone; one trained before model.pt existed gets it from model_view0/1.pt
    (tmp_path / "models" / "model.pt").unlink()
    assert len(_trainer(splits, tmp_path, iterations=2).run()) == 2
    assert set(load_weights(tmp_path / "models" / "model.pt")) == set(_two_view().state_dict())


def test_empty_pool_stops_cleanly(tmp_path):
    splits = load_splits(write_demo(tmp_path / "all_labelled", size="tiny", hidden_fraction=0.0))
    assert len(splits.unlabelled) == 0
    hist = _trainer(splits, tmp_path, iterations=4).run()
    assert len(hist) == 1 and hist[0]["pool_size"] == 0
    assert load_weights(tmp_path / "models" / "checkpoint_last.pt")["finished"] is True


def test_pool_exhausted_then_stops(tiny, tmp_path, monkeypatch):
    import tlk_components.engines.trainers.cotraining as eng

    splits = load_splits(tiny)
    truth = torch.as_tensor(splits.samples.labels)

    def oracle(network, images, ids, device, batch_size=256, inferer=None):  # both models agree, and are right
        return torch.nn.functional.one_hot(truth[torch.as_tensor(np.asarray(ids), dtype=torch.long)], 10).float()

    monkeypatch.setattr(eng, "predict_proba", oracle)
    n = len(splits.unlabelled)
    hist = _trainer(splits, tmp_path, iterations=6, k=n // 2 + 5).run()
    # round 1 picks n//2+5 per model; round 2 has fewer left than k (clamped) and takes the rest; round 3 trains
    # on the last pseudo-labels and stops: the pool is empty
    assert [h["pool_size"] for h in hist] == [n - (n // 2 + 5), 0, 0]
    assert hist[1]["k"] == n - (n // 2 + 5) and hist[2]["added_view0"] == 0
    assert hist[0]["pseudo_label_accuracy"] == 1.0 and hist[0]["conflicts"] == 0
    assert load_weights(tmp_path / "models" / "checkpoint_last.pt")["finished"] is True


def test_modes_labelled_only_and_all_labels(tiny, tmp_path):
    splits = load_splits(tiny)
    base = _trainer(splits, tmp_path / "a", mode="labelled_only", iterations=1)
    base.run()
    assert len(base.train_ids[0]) == len(splits.train) and len(base.pool) == 0
    full = _trainer(splits, tmp_path / "b", mode="all_labels", iterations=1)
    full.run()
    assert len(full.train_ids[1]) == len(splits.train) + len(splits.unlabelled)
    assert not full.train_pseudo[1].any()


def _two_view(**kw) -> TwoViewClassifier:
    return TwoViewClassifier(view0=SmallCNN(channels=(8, 16), **kw), view1=SmallCNN(channels=(8, 16), **kw))


def test_evaluator_and_predictor(tiny, tmp_path):
    splits = load_splits(tiny)
    tr = _trainer(splits, tmp_path, iterations=1)
    tr.run()
    dataset = TwoViewDataset(splits.samples, PRE)
    m = CoTrainingEvaluator(
        splits=splits,
        dataset=dataset,
        network=_two_view(),
        ckpt_dir=tmp_path / "models",
        output_dir=tmp_path / "eval",
        keys=["test_accuracy_view0", "test_accuracy_view1", "test_accuracy_ensemble"],
    ).run()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["test_accuracy_ensemble"] == m["test_accuracy_ensemble"]
    assert saved["n_test"] == len(splits.test) and len(saved["confusion_matrix_ensemble"]) == 10
    assert np.sum(saved["confusion_matrix_ensemble"]) == len(splits.test)
    assert set(saved["per_class_accuracy"]) == {"view0", "view1", "ensemble"}
    assert (tmp_path / "eval" / "test_per_class_accuracy.png").is_file()
    # the evaluator's figures are those of the two view models trained by the engine, ensemble = mean softmax
    test = splits.test
    probs = []
    for v in (0, 1):
        net = SmallCNN(channels=(8, 16))
        net.load_state_dict(load_weights(tmp_path / "models" / f"model_view{v}.pt"))
        x = torch.stack([dataset.views[v][int(i)] for i in test])
        probs.append(torch.softmax(net.eval()(x), dim=1))
    truth = splits.samples.labels[test]
    assert m["test_accuracy_view0"] == pytest.approx(float((probs[0].argmax(1).numpy() == truth).mean()))
    ens = (probs[0] + probs[1]).argmax(1).numpy()
    assert m["test_accuracy_ensemble"] == pytest.approx(float((ens == truth).mean()))
    out = CoTrainingPredictor(
        dataset=TwoViewDataset(tiny / "samples.csv", PRE),
        output_csv=tmp_path / "pred.csv",
        network=_two_view(),
        ckpt_dir=tmp_path / "models",
    ).run()
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 120 and set(rows[0]) == {
        "view0",
        "view1",
        "pred_view0",
        "pred_view1",
        "pred",
        "confidence",
        "label",
    }
    assert all(r["pred"] in splits.samples.class_names and 0 < float(r["confidence"]) <= 1 for r in rows)
    pairs = TwoViewDataset(tiny / "samples.csv", PRE)
    with pytest.raises(ConfigError, match="model.pt does not fit the two-view network"):
        CoTrainingPredictor(
            dataset=pairs,
            output_csv=tmp_path / "pred_bad.csv",
            network=_two_view(num_classes=3),
            ckpt_dir=tmp_path / "models",
        ).run()
    with pytest.raises(ConfigError, match="predicts 10 classes but the class map has 3"):
        CoTrainingPredictor(
            dataset=pairs,
            output_csv=tmp_path / "pred_bad.csv",
            network=_two_view(),
            ckpt_dir=tmp_path / "models",
            class_names=["a", "b", "c"],
        ).run()
    assert not (tmp_path / "pred_bad.csv").exists()
    with pytest.raises(ConfigError, match="expected the bundle's network_def, a .*TwoViewClassifier"):
        CoTrainingPredictor(dataset=pairs, output_csv=tmp_path / "p.csv", network=SmallCNN(), ckpt_dir=tmp_path)
    s = splits.samples
    fewer = TwoViewSamples(s.view0[:10], s.view1[:10], s.labels[:10], s.class_names)
    with pytest.raises(ConfigError, match="its 10 view pairs are not the 120 samples of splits"):
        CoTrainingEvaluator(
            splits=splits,
            dataset=TwoViewDataset(fewer, PRE),
            network=_two_view(),
            ckpt_dir=tmp_path,
            output_dir=tmp_path,
        )


def test_two_view_dataset(tiny, tmp_path):
    splits = load_splits(tiny)
    ds = TwoViewDataset(splits.samples, PRE)
    item = ds[3]
    assert item["image"].shape == (2, 16, 8) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][0], ds.views[0][3][0]) and torch.equal(item["image"][1], ds.views[1][3][0])
    assert int(item["label"]) == splits.samples.labels[3] and ds.raw_labels[3] == str(splits.samples.labels[3])
    pairs = TwoViewDataset(tiny / "samples.csv", PRE)
    assert len(pairs) == 120 and pairs.root == tiny and int(pairs[0]["label"]) == -1
    # a missing image is named before any compute; views of different sizes cannot be stacked
    bad = tmp_path / "bad.csv"
    bad.write_text(f"view0,view1\n{tiny}/view0/0/missing.png,{pairs.view1[0]}\n{pairs.view0[0]},{pairs.view1[0]}\n")
    with pytest.raises(DatasetError, match="1 image file.s. missing") as e:
        TwoViewDataset(bad, PRE)
    assert len(e.value.problems) == 1 and e.value.problems[0].endswith("view0/0/missing.png: image file missing")
    wide = Compose([PRE, lambda x: torch.cat([x, x], dim=-1)])
    with pytest.raises(DatasetError, match="need the same spatial size: add a Resize"):
        TwoViewDataset(tiny / "samples.csv", [PRE, wide])[0]
    with pytest.raises(ConfigError, match="expected TwoViewSamples"):
        TwoViewDataset(42, PRE)


def test_ill_engine_arguments(tiny, tmp_path):
    splits = load_splits(tiny)
    with pytest.raises(ConfigError, match=rf"k=500 is larger than the unlabelled pool \({len(splits.unlabelled)}"):
        _trainer(splits, tmp_path, k=500)
    with pytest.raises(ConfigError, match="mode='cotrain'.*Did you mean 'cotraining'"):
        _trainer(splits, tmp_path, mode="cotrain")
    with pytest.raises(ConfigError, match="iterations=0"):
        _trainer(splits, tmp_path, iterations=0)
    net = SmallCNN()
    with pytest.raises(ConfigError, match="its own network"):
        _trainer(splits, tmp_path, networks=[net, net])
    with pytest.raises(ConfigError, match="validation split is empty"):
        _trainer(load_splits(tiny, val_fraction=0.0), tmp_path)


def test_ill_resume_from_other_mode(tiny, tmp_path):
    splits = load_splits(tiny)
    _trainer(splits, tmp_path, iterations=1).run()
    with pytest.raises(ConfigError, match="resume false"):
        _trainer(splits, tmp_path, iterations=2, mode="labelled_only").run()


def test_view_networks():
    x = torch.zeros(2, 1, 16, 8)
    assert build_view_network("small_cnn")(x).shape == (2, 10)
    assert build_view_network("resnet18", num_classes=3)(x).shape == (2, 3)
    with pytest.raises(ConfigError, match="Did you mean 'resnet18'"):
        build_view_network("resnet19")
    with pytest.raises(ConfigError, match="num_classes"):
        SmallCNN(num_classes=1)


# ------------------------------------------------------------- issue 12: lr schedule, early stopping, comparison


class _ConstantLoss(torch.nn.Module):
    """A loss that never improves (and gives zero gradients): the validation loss stays at 1.0."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pred.sum() * 0.0 + 1.0


def test_reduce_lr_on_plateau_steps_with_validation_loss(tiny, tmp_path):
    """ReduceLROnPlateau(patience=1) halves the lr once the validation loss fails to improve for 2 evaluations."""
    splits = load_splits(tiny)
    tr = _trainer(splits, tmp_path, iterations=1, max_epochs=4, patience=0, loss_function=_ConstantLoss())
    hist = tr.run()
    # epoch 1 sets the best loss, epochs 2 and 3 do not improve -> reduced after epoch 3; epoch 4 is 1 bad epoch
    assert hist[0]["epochs_view0"] == hist[0]["epochs_view1"] == 4
    assert hist[0]["lr_view0"] == pytest.approx(3e-3 * 0.5) and hist[0]["lr_view1"] == pytest.approx(3e-3 * 0.5)
    tr = _trainer(splits, tmp_path / "b", iterations=1, max_epochs=4, patience=0, loss_function=_ConstantLoss())
    tr.lr_schedulers = [None, None]
    assert tr.run()[0]["lr_view0"] == pytest.approx(3e-3)  # without a scheduler the lr stays


def test_early_stopping_after_patience(tiny, tmp_path):
    """patience=2: a model whose validation loss never improves stops after 1 + 2 epochs, not max_epochs."""
    splits = load_splits(tiny)
    hist = _trainer(splits, tmp_path, iterations=1, max_epochs=10, patience=2, loss_function=_ConstantLoss()).run()
    assert hist[0]["epochs_view0"] == hist[0]["epochs_view1"] == 3
    hist = _trainer(
        splits, tmp_path / "off", iterations=1, max_epochs=5, patience=0, loss_function=_ConstantLoss()
    ).run()
    assert hist[0]["epochs_view0"] == 5  # patience 0 disables early stopping


def test_plot_titles_name_pseudo_label_accuracy(tmp_path, monkeypatch):
    import tlk_components.engines.trainers.cotraining as eng

    figs = []
    monkeypatch.setattr(eng, "save_figure", lambda fig, path: figs.append(fig) or Path(path))
    row = {"iteration": 1, "val_accuracy_view0": 0.5, "val_accuracy_view1": 0.6, "val_accuracy_ensemble": 0.7}
    row.update({"pseudo_label_accuracy": 0.9, "pool_size": 5, "train_size_view0": 3, "train_size_view1": 3})
    eng.plot_cotraining_log([row], tmp_path / "p.png")
    ax = figs[0].axes[0]
    assert "pseudo-label accuracy" in ax.get_title() and ax.get_title() != "validation accuracy per iteration"
    assert any("pseudo-labels" in t.get_text() for t in ax.get_legend().get_texts())


def test_comparison_of_three_runs(tiny, tmp_path):
    """Labelled-only, co-training and fully supervised scored side by side, with pseudo-label accuracy."""
    from tlk_components.engines.evaluators.cotraining import CoTrainingComparison

    splits = load_splits(tiny)
    runs = {}
    for mode, name in (("labelled_only", "labelled_only"), ("cotraining", "cotraining"), ("all_labels", "sup")):
        _trainer(splits, tmp_path / name, mode=mode, iterations=2).run()
        runs[name] = {"ckpt_dir": tmp_path / name / "models", "output_dir": tmp_path / name / "eval", "config": name}
    runs["never_trained"] = {"ckpt_dir": tmp_path / "none", "output_dir": tmp_path / "none", "config": "x.json"}
    out = CoTrainingComparison(splits, TwoViewDataset(splits.samples, PRE), _two_view(), runs, tmp_path / "cmp").run()
    assert [r["run"] for r in out["runs"]] == ["labelled_only", "cotraining", "sup"]
    by = {r["run"]: r for r in out["runs"]}
    assert by["labelled_only"]["pseudo_labels"] == 0 and by["labelled_only"]["pseudo_label_accuracy"] is None
    assert by["cotraining"]["pseudo_labels"] > 0 and 0 <= by["cotraining"]["pseudo_label_accuracy"] <= 1
    assert by["sup"]["train_size_view0"] == len(splits.train) + len(splits.unlabelled)  # hidden labels used
    for r in out["runs"]:
        metrics = json.loads((runs[r["run"]]["output_dir"] / "metrics.json").read_text())
        assert r["test_accuracy_ensemble"] == metrics["test_accuracy_ensemble"]
    assert "never_trained" in out["missing"] and "x.json" in out["missing"]["never_trained"]
    for f in ("comparison.json", "comparison.csv", "comparison.md", "comparison.png"):
        assert (tmp_path / "cmp" / f).is_file()
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert md.startswith("| run | test_accuracy_ensemble |") and "| cotraining |" in md
    with pytest.raises(DatasetError, match="no run to compare has been trained"):
        CoTrainingComparison(
            splits, TwoViewDataset(splits.samples, PRE), _two_view(), {"a": runs["never_trained"]}, tmp_path
        ).run()


# ------------------------------------------------------------- issue 12: training-run safety (items 5, 6, 7, 9, 15)


class _NaNLoss(torch.nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pred.sum() * float("nan")


def test_nan_loss_stops_cotraining_and_saves_nothing(tiny, tmp_path):
    splits = load_splits(tiny)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan.*verify-dataset"):
        _trainer(splits, tmp_path, iterations=1, loss_function=_NaNLoss()).run()
    assert not list((tmp_path / "models").glob("model*.pt"))
    assert not (tmp_path / "models" / "checkpoint_last.pt").exists()


def test_new_run_keeps_earlier_models(tiny, tmp_path):
    splits = load_splits(tiny)
    _trainer(splits, tmp_path, iterations=1).run()
    models = tmp_path / "models"
    before = {n: (models / n).read_bytes() for n in ("model.pt", "model_view0.pt", "model_view1.pt")}
    _trainer(splits, tmp_path, iterations=1, resume=False, lr=1e-4).run()
    for name, data in before.items():
        kept = list(models.glob(f"{name}.bak-*"))
        assert len(kept) == 1 and kept[0].read_bytes() == data
        assert (models / name).is_file()
    # a resumed run writes over its own files, keeping nothing aside
    _trainer(splits, tmp_path, iterations=2, lr=1e-4).run()
    assert len(list(models.glob("model.pt.bak-*"))) == 1


def test_checkpoint_of_another_run_is_refused(tiny, tmp_path):
    splits = load_splits(tiny)
    mine = {"configs": {"train.json#k": "a"}, "overrides": {}}
    other = {"configs": {"train.json#k": "a"}, "overrides": {"dataset_dir": "/data/other"}}
    _trainer(splits, tmp_path, iterations=1, run_info=mine).run()
    with pytest.raises(ConfigError, match=r"another training run.*dataset_dir.*--resume false.*--ckpt_dir"):
        _trainer(splits, tmp_path, iterations=2, run_info=other).run()
    assert len(_trainer(splits, tmp_path, iterations=1, run_info=other, resume=False).run()) == 1


def test_second_concurrent_cotraining_run_is_refused(tiny, tmp_path):
    from tlk_components.engines.handlers.checkpoint import RunLock

    held = RunLock(tmp_path / "models")
    held.acquire()
    try:
        with pytest.raises(ConfigError, match=r"in use by another training run.*--ckpt_dir"):
            _trainer(load_splits(tiny), tmp_path, iterations=1).run()
    finally:
        held.release()
    assert len(_trainer(load_splits(tiny), tmp_path, iterations=1).run()) == 1  # free again


def test_resume_with_new_learning_rate_restarts_schedule(tiny, tmp_path):
    splits = load_splits(tiny)
    _trainer(splits, tmp_path, iterations=1, lr=3e-3).run()
    same = _trainer(splits, tmp_path / "same", iterations=1, lr=3e-3)
    same.run()
    # the same learning rate: the plateau scheduler's progress is restored
    resumed = _trainer(splits, tmp_path / "same", iterations=2, lr=3e-3)
    resumed._initial_state()
    resumed.load_state_dict(load_weights(tmp_path / "same" / "models" / "checkpoint_last.pt"))
    assert resumed.lr_schedulers[0].best < float("inf")
    # another learning rate: the optimizer runs at the new one, the schedule starts afresh
    changed = _trainer(splits, tmp_path, iterations=2, lr=1e-3)
    hist = changed.run()
    assert hist[1]["lr_view0"] == pytest.approx(1e-3) and hist[1]["lr_view1"] == pytest.approx(1e-3)
    assert load_weights(tmp_path / "models" / "checkpoint_last.pt")["config_lr0"] == [pytest.approx(1e-3)]


def test_resume_after_architecture_change_is_clear(tiny, tmp_path):
    splits = load_splits(tiny)
    _trainer(splits, tmp_path, iterations=1).run()
    with pytest.raises(ConfigError, match=r"checkpoint_last.pt: the saved model0 does not fit.*--resume false"):
        _trainer(splits, tmp_path, iterations=2, channels=(4, 8)).run()
