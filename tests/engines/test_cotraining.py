# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The co-training engine on the tiny demo: exchange, pool shrink, clean stops, resume, model.pt, evaluation,
inference, the two-view dataset."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureType, LoadImage, ScaleIntensityRange
from monai.utils import set_determinism

from tlk_components.data.cotraining import TwoViewSamples, TwoViewSplits, load_splits, write_demo
from tlk_components.engines.evaluators.cotraining import CoTrainingEvaluator
from tlk_components.engines.handlers.training import NonFiniteLossError
from tlk_components.engines.inference.cotraining import CoTrainingPredictor
from tlk_components.engines.trainers.cotraining import LOG_FIELDS, CoTrainer, TwoViewDataset
from tlk_components.engines.trainers.cotraining_log import CoTrainingLog
from tlk_components.engines.trainers.cotraining_state import (
    CoTrainingPools,
    CoTrainingProgress,
    CoTrainingSettings,
    restore_optimizer,
)
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
    straight = _trainer(splits, tmp_path / "straight", iterations=2)
    straight.run()
    first = _trainer(splits, tmp_path, iterations=1).run()
    assert first[0]["k"] == first[0]["added_view0"] == 0  # the last round of that run exchanged nothing
    again = _trainer(splits, tmp_path, iterations=2)
    hist = again.run()
    # resumed with more iterations, the exchange round 1 skipped happens before round 2 trains: the same
    # pseudo-labels, training sets and pool as a run that asked for 2 iterations from the start
    assert len(hist) == 2 and hist[0] == json.loads(json.dumps(straight.log.history[0]))
    assert hist[0]["added_view0"] > 0 and hist[0]["added_view1"] > 0
    for v in (0, 1):
        assert np.array_equal(again.train_ids[v], straight.train_ids[v])
        assert np.array_equal(again.train_labels[v], straight.train_labels[v])
    assert np.array_equal(again.pool, straight.pool) and len(again.pool) == hist[1]["pool_size"]
    assert json.loads((tmp_path / "eval" / "cotraining_log.json").read_text())[0]["added_view0"] > 0
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


# ------------------------------------------------------------- the engine's parts: settings, pools, progress, log


def _splits(n_train: int = 4, n_val: int = 2, n_unlabelled: int = 6, hidden: bool = True) -> TwoViewSplits:
    """A table of ``n_train + n_val + n_unlabelled`` samples (no images needed), classes ``i % 3``."""
    n = n_train + n_val + n_unlabelled
    labels = np.arange(n, dtype=np.int64) % 3
    if not hidden:
        labels[n_train + n_val :] = -1
    samples = TwoViewSamples(
        [f"/v0/{i}.png" for i in range(n)], [f"/v1/{i}.png" for i in range(n)], labels, ["a", "b", "c"]
    )
    ids = np.arange(n, dtype=np.int64)
    return TwoViewSplits(
        samples, ids[:n_train], ids[n_train : n_train + n_val], np.zeros(0, np.int64), ids[n_train + n_val :]
    )


def test_settings_normalise_and_are_frozen():
    s = CoTrainingSettings(k=10.0, iterations=3, threshold=0.5, class_balance=1, seed=7.0, amp=1)
    assert (s.k, s.iterations, s.threshold, s.class_balance, s.seed, s.amp) == (10, 3, 0.5, True, 7, True)
    assert type(s.k) is int and type(s.seed) is int
    assert CoTrainingSettings(mode="labelled_only", threshold=None).threshold is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mode": "cotrain"}, "mode='cotrain'.*Did you mean 'cotraining'"),
        ({"iterations": 0}, r"iterations=0: expected an integer >= 1"),
        ({"max_epochs": 1.5}, r"max_epochs=1.5: expected an integer >= 1"),
        ({"k": True}, r"k=True: expected an integer >= 1"),
        ({"threshold": 1.5}, "threshold"),
        ({"batch_size": 0}, r"batch_size=0: expected an integer >= 1"),
        ({"num_workers": -1}, r"num_workers=-1: expected an integer >= 0"),
        ({"patience": -1}, r"patience=-1: expected an integer >= 0"),
        ({"iteration_patience": "2"}, r"iteration_patience='2': expected an integer >= 0"),
    ],
)
def test_ill_settings(kw, message):
    with pytest.raises(ConfigError, match=message):
        CoTrainingSettings(**kw)


def test_ill_settings_against_splits():
    CoTrainingSettings(k=6).check_splits(_splits())
    with pytest.raises(ConfigError, match=r"k=7 is larger than the unlabelled pool \(6 samples\); choose k <= 6"):
        CoTrainingSettings(k=7).check_splits(_splits())
    CoTrainingSettings(k=7, mode="labelled_only").check_splits(_splits())  # no pool to draw from: k unused
    CoTrainingSettings(k=7).check_splits(_splits(n_unlabelled=0))
    with pytest.raises(ConfigError, match="validation split is empty"):
        CoTrainingSettings().check_splits(_splits(n_val=0))


def test_pools_start_per_mode(caplog):
    s = _splits()
    co = CoTrainingPools.initial(s, "cotraining")
    assert [t.tolist() for t in co.train_ids] == [[0, 1, 2, 3]] * 2 and co.pool.tolist() == [6, 7, 8, 9, 10, 11]
    assert [t.tolist() for t in co.train_labels] == [[0, 1, 2, 0]] * 2 and not any(p.any() for p in co.train_pseudo)
    assert co.train_ids[0] is not co.train_ids[1] and co.pool is not s.unlabelled
    base = CoTrainingPools.initial(s, "labelled_only")
    assert len(base.pool) == 0 and base.train_ids[1].tolist() == [0, 1, 2, 3]
    full = CoTrainingPools.initial(s, "all_labels")
    assert full.train_ids[0].tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11] and len(full.pool) == 0
    assert full.train_labels[0].tolist() == (np.array([0, 1, 2, 3, 6, 7, 8, 9, 10, 11]) % 3).tolist()
    with caplog.at_level("WARNING", logger="tlk_components.engines.trainers.cotraining"):
        none_known = CoTrainingPools.initial(_splits(hidden=False), "all_labels")
    assert none_known.train_ids[0].tolist() == [0, 1, 2, 3] and "labelled-only baseline" in caplog.text


def _one_hot(ids: list[int], classes: list[int], confidence: list[float]) -> torch.Tensor:
    p = torch.full((len(ids), 3), 0.0)
    for row, (c, conf) in enumerate(zip(classes, confidence, strict=True)):
        p[row] = (1 - conf) / 2
        p[row, c] = conf
    return p


def test_pools_exchange_cross_feeds_and_round_trips():
    s = _splits()
    pools = CoTrainingPools.initial(s, "cotraining")
    truth = s.samples.labels  # pool samples 6..11 are of class 0, 1, 2, 0, 1, 2
    # model 0 is sure of 6 (right, 0) and 7 (wrong: 2); model 1 of 10 (right, 1) and 11 (right, 2)
    p0 = _one_hot(list(range(6, 12)), [0, 2, 0, 0, 0, 0], [0.9, 0.8, 0.4, 0.4, 0.4, 0.4])
    p1 = _one_hot(list(range(6, 12)), [0, 0, 0, 0, 1, 2], [0.4, 0.4, 0.4, 0.4, 0.9, 0.8])
    stats = pools.exchange(p0, p1, 2, None, False, truth)
    assert stats == {
        "added_view0": 2,
        "pseudo_label_accuracy_view0": 1.0,
        "added_view1": 2,
        "pseudo_label_accuracy_view1": 0.5,
        "pseudo_label_accuracy": 0.75,
        "conflicts": 0,
        "k": 2,
    }
    # model 1's picks go to model 0's training set and the other way round, flagged as pseudo-labels
    assert pools.train_ids[0].tolist() == [0, 1, 2, 3, 10, 11] and pools.train_labels[0].tolist()[-2:] == [1, 2]
    assert pools.train_ids[1].tolist() == [0, 1, 2, 3, 6, 7] and pools.train_labels[1].tolist()[-2:] == [0, 2]
    assert [p.tolist() for p in pools.train_pseudo] == [[False] * 4 + [True] * 2] * 2
    assert pools.pool.tolist() == [8, 9]
    state = pools.state_dict()
    assert list(state) == [
        "pool",
        "train_ids0",
        "train_labels0",
        "train_pseudo0",
        "train_ids1",
        "train_labels1",
        "train_pseudo1",
    ]
    assert state["pool"].dtype == torch.long and state["train_pseudo1"].dtype == torch.bool
    again = CoTrainingPools.from_state_dict(state)
    for v in (0, 1):
        assert np.array_equal(again.train_ids[v], pools.train_ids[v])
        assert np.array_equal(again.train_labels[v], pools.train_labels[v])
        assert np.array_equal(again.train_pseudo[v], pools.train_pseudo[v])
    assert np.array_equal(again.pool, pools.pool)


def test_pools_picks_clamped_to_pool(caplog):
    pools = CoTrainingPools.initial(_splits(), "cotraining")
    assert pools.picks_this_round(6) == 6 and "smaller than k" not in caplog.text
    with caplog.at_level("INFO", logger="tlk_components.engines.trainers.cotraining"):
        assert pools.picks_this_round(10) == 6
    assert "unlabelled pool (6) is smaller than k=10; this round picks 6 per model" in caplog.text


def test_ill_pools():
    ids = np.arange(3)
    with pytest.raises(ConfigError, match="train_ids: expected one array per view"):
        CoTrainingPools([ids], [ids, ids], [ids, ids], np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="view 1: 3 training ids but 2 labels"):
        CoTrainingPools([ids, ids], [ids, ids[:2]], [ids, ids], np.zeros(0, np.int64))


def test_progress_counts_rounds_without_a_better_ensemble():
    p = CoTrainingProgress()
    assert p.record(0.5, iteration_patience=2) is None and (p.best_ensemble, p.stale) == (0.5, 0)
    assert p.record(0.5, iteration_patience=2) is None and p.stale == 1  # equal is not better
    assert p.record(None, iteration_patience=2) == "no better ensemble validation accuracy for 2 iterations"
    assert p.record(0.6, iteration_patience=2) is None and (p.best_ensemble, p.stale) == (0.6, 0)
    assert all(p.record(0.1, iteration_patience=0) is None for _ in range(5))  # 0: never stops
    p.iteration, p.finished = 4, True
    state = p.state_dict()
    assert state == {"iteration": 4, "finished": True, "best_ensemble": 0.6, "stale": 5}
    assert CoTrainingProgress.from_state_dict(state) == p


class _Writer:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.scalars.append(("closed", 0.0, 0))


def _row(iteration: int, **kw) -> dict:
    row = {"iteration": iteration, "mode": "cotraining", "k": 2, "added_view0": 1, "added_view1": 2, "conflicts": 0}
    row.update(
        {"pseudo_label_accuracy": None, "pseudo_label_accuracy_view0": None, "pseudo_label_accuracy_view1": None}
    )
    row.update({"val_accuracy_view0": 0.5, "val_accuracy_view1": 0.25, "val_accuracy_ensemble": 0.75})
    row.update({"train_size_view0": 5, "train_size_view1": 6, "pool_size": 3})
    row.update(kw)
    return row


def test_log_rounds_epochs_and_files(tmp_path, caplog):
    plotted = []
    log = CoTrainingLog(tmp_path, plot=lambda history, path: plotted.append((len(history), path)))
    log._writer = writer = _Writer()
    with caplog.at_level("INFO", logger="tlk_components.engines.trainers.cotraining"):
        log.epoch(1, 0, 1, [1.0, 2.0], {"val_accuracy": 0.5, "val_loss": 0.25}, 1e-3)
        log.epoch(1, 0, 2, [], {"val_accuracy": 0.75, "val_loss": 0.125}, 5e-4)
        log.round(_row(1, pseudo_label_accuracy=0.5), iterations=3)
    assert log.global_epoch == [0, 2]
    assert writer.scalars[:4] == [
        ("train_loss/view1", 1.5, 1),
        ("val_accuracy/view1", 0.5, 1),
        ("val_loss/view1", 0.25, 1),
        ("learning_rate/view1", 1e-3, 1),
    ]
    assert ("train_loss/view1", pytest.approx(0.0), 2) not in writer.scalars  # no batch: no training loss
    assert [t for t, _, step in writer.scalars if t.startswith("cotraining/")] == [
        "cotraining/val_accuracy_view0",
        "cotraining/val_accuracy_view1",
        "cotraining/val_accuracy_ensemble",
        "cotraining/pseudo_label_accuracy",
        "cotraining/pool_size",
        "cotraining/added_view0",
        "cotraining/added_view1",
        "cotraining/conflicts",
    ]
    assert "iteration 1 model 1 epoch 1: train loss 1.5000, val accuracy 0.5000, val loss 0.2500" in caplog.text
    assert "iteration 1 model 1 epoch 2: train loss nan, val accuracy 0.7500, val loss 0.1250" in caplog.text
    assert (
        "iteration 1/3: val accuracy 0.5000 / 0.2500 / ensemble 0.7500; added 1 + 2 pseudo-labels (accuracy 0.500), "
        "0 conflicts, pool 3"
    ) in caplog.text
    log.round(_row(2), iterations=3)  # no pseudo-label accuracy: no scalar, "n/a" in the line
    assert ("cotraining/pseudo_label_accuracy", None, 2) not in writer.scalars
    log.write()
    assert json.loads((tmp_path / "cotraining_log.json").read_text()) == log.history
    rows = list(csv.DictReader((tmp_path / "cotraining_log.csv").open()))
    assert list(rows[0]) == list(LOG_FIELDS) and rows[1]["pseudo_label_accuracy"] == "" and rows[0]["k"] == "2"
    assert plotted == [(2, tmp_path / "cotraining_accuracy.png")]
    log.close()
    assert writer.scalars[-1][0] == "closed" and log._writer is None
    log.close()  # twice is fine
    again = CoTrainingLog(tmp_path)
    again.load_state_dict(log.state_dict())
    assert again.history == log.history and again.global_epoch == [0, 2]
    again.load_state_dict({"history": []})  # a checkpoint from before global_epoch
    assert again.global_epoch == [0, 0]
    (tmp_path / "no_png").mkdir()  # plot=None: no PNG
    CoTrainingLog(tmp_path / "no_png").write()
    assert sorted(p.name for p in (tmp_path / "no_png").iterdir()) == ["cotraining_log.csv", "cotraining_log.json"]


def test_restore_optimizer_keeps_or_restarts_the_schedule(tmp_path, caplog):
    def parts(lr: float, factor: float = 0.5):
        net = torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=factor, patience=1)

    opt, sched = parts(1e-2)
    for loss in (1.0, 2.0, 2.0, 2.0):
        sched.step(loss)
    ckpt = {"optimizer0": opt.state_dict(), "lr_scheduler0": sched.state_dict(), "config_lr0": [1e-2]}
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    # same config: the schedule's progress (and the reduced lr) come back
    opt2, sched2 = parts(1e-2)
    restore_optimizer(opt2, sched2, ckpt, 0, [1e-2], tmp_path / "c.pt", "fix")
    assert sched2.best == 1.0 and opt2.param_groups[0]["lr"] == pytest.approx(5e-3)
    # another learning rate, or another scheduler setting: optimizer state kept, schedule from the config
    for lr, factor in ((1e-3, 0.5), (1e-2, 0.1)):
        opt3, sched3 = parts(lr, factor)
        with caplog.at_level("WARNING", logger="tlk_components.engines.trainers.cotraining"):
            restore_optimizer(opt3, sched3, ckpt, 0, [lr], tmp_path / "c.pt", "fix")
        assert opt3.param_groups[0]["lr"] == pytest.approx(lr) and sched3.best == float("inf")
        assert "learning rate or scheduler settings of model 0 changed" in caplog.text
        caplog.clear()
    with pytest.raises(ConfigError, match="optimizer1"):
        restore_optimizer(opt2, None, {"optimizer1": {"state": {}, "param_groups": []}}, 1, [1e-2], "c.pt", "fix")


def test_engine_exposes_its_parts(tiny, tmp_path):
    tr = _trainer(load_splits(tiny), tmp_path, iterations=3, max_epochs=2, threshold=0.3)
    assert isinstance(tr.settings, CoTrainingSettings) and tr.settings.threshold == 0.3
    assert (tr.mode, tr.iterations, tr.max_epochs) == ("cotraining", 3, 2)
    assert tr.amp is False and tr.history == [] and tr.pools is None
    tr._initial_state()
    assert tr.pool is tr.pools.pool and tr.train_ids is tr.pools.train_ids and len(tr.train_pseudo) == 2
