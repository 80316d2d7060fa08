# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""What a training run does with its checkpoints, overrides and errors (issue 12).

Tiny MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` on random tensors wired as the bundles wire them
(``AtomicCheckpointSaver`` on the evaluator, ``ResumeFromLast`` and ``ValidationHandler`` on the trainer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler, from_engine

from tlk_components.engines.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromLast
from tlk_components.engines.handlers.training import NonFiniteLossError, StopOnNonFiniteLoss, set_validator
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import load_weights
from tlk_components.utils.runtime import check_overrides, run_fingerprint

REPO = Path(__file__).resolve().parents[2]
MNIST_TRAIN = str(REPO / "bundles" / "mnist_mlp_classification" / "configs" / "train.json")
RUN_A = {"configs": {"train.json": "a"}, "overrides": {}}


def _loader(n: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(n, 4, generator=g), "label": torch.randint(0, 2, (n,), generator=g)} for _ in range(2)
    ]


class Run:
    """A bundle-like training run in ``ckpt_dir``."""

    def __init__(
        self,
        ckpt_dir: Path,
        epochs: int = 1,
        val_interval: int = 5,
        lr: float = 0.1,
        hidden: int = 4,
        resume: bool = True,
        run_info: dict[str, Any] | None = None,
        nan_loss: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.network = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 2))
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
        objs = {"model": self.network, "optimizer": self.optimizer, "lr_scheduler": self.scheduler}
        ce = torch.nn.CrossEntropyLoss()
        loss = (lambda p, t: ce(p, t) * float("nan")) if nan_loss else ce
        self.resume = ResumeFromLast(ckpt_dir, objs, enabled=resume, run_info=run_info or RUN_A)
        self.handlers = [
            LrScheduleHandler(self.scheduler, print_lr=False),
            ValidationHandler(interval=val_interval, epoch_level=True),
            self.resume,
            StopOnNonFiniteLoss(),
        ]
        self.trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=epochs,
            train_data_loader=_loader(),
            network=self.network,
            optimizer=self.optimizer,
            loss_function=loss,
            train_handlers=self.handlers,
            decollate=False,
        )
        self.saver = AtomicCheckpointSaver(ckpt_dir, objs, trainer=self.trainer)
        self.evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=_loader(seed=1),
            network=self.network,
            key_val_metric={"acc": Accuracy(output_transform=from_engine(["pred", "label"]))},
            val_handlers=[self.saver],
            decollate=False,
        )
        set_validator(self.handlers, self.evaluator, trainer=self.trainer)

    def run(self) -> Run:
        try:
            self.trainer.run()
        finally:
            self.resume.release()
        return self


# --- every bundle: the last epoch is validated, so a short run leaves model.pt


def test_run_shorter_than_val_interval_saves_best_model(tmp_path: Path) -> None:
    r = Run(tmp_path, epochs=1, val_interval=5).run()
    assert (tmp_path / "model.pt").is_file()
    assert r.evaluator.state.epoch == 1  # validated once, after epoch 1
    ckpt = load_weights(tmp_path / "checkpoint_last.pt")
    assert ckpt["best_metric"] is not None  # the final validation reached the last checkpoint too


def test_last_epoch_validated_once(tmp_path: Path) -> None:
    r = Run(tmp_path, epochs=2, val_interval=1)
    calls: list[int] = []
    r.evaluator.add_event_handler(Events.COMPLETED, lambda e: calls.append(r.trainer.state.epoch))
    r.run()
    assert calls == [1, 2]


# --- item 15: architecture change


def test_resume_after_architecture_change_is_clear(tmp_path: Path) -> None:
    Run(tmp_path, epochs=1, val_interval=1).run()
    with pytest.raises(ConfigError, match=r"checkpoint_last\.pt.*--resume false") as e:
        Run(tmp_path, epochs=2, hidden=8).run()
    assert "size mismatch" in str(e.value) or "0.weight" in str(e.value)


# --- item 7: non-finite loss


def test_nan_loss_stops_with_error_and_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 1.*verify-dataset"):
        Run(tmp_path, epochs=2, val_interval=1, nan_loss=True).run()
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_nan_loss_in_bundle_exits_nonzero(tmp_path: Path) -> None:
    from tests.bundle_utils import run_bundle
    from tlk_components.data.mnist import write_demo

    data = tmp_path / "data"
    write_demo(data, size="tiny")
    proc = run_bundle(
        "mnist_mlp_classification",
        "train.json",
        check=False,
        dataset_dir=data,
        demo_dir=data,
        ckpt_dir=tmp_path / "models",
        output_dir=tmp_path / "eval",
        epochs=1,
        learning_rate=1e30,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "NonFiniteLossError" in proc.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "models" / "model.pt").exists()


# --- item 5: a new run keeps an earlier model


def test_fresh_run_keeps_earlier_best_model(tmp_path: Path) -> None:
    Run(tmp_path, epochs=1, val_interval=1).run()
    first = (tmp_path / "model.pt").read_bytes()
    Run(tmp_path, epochs=1, val_interval=1, resume=False, lr=0.5).run()
    backups = list(tmp_path.glob("model.pt.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == first
    assert (tmp_path / "model.pt").is_file()


def test_resumed_run_overwrites_its_own_model(tmp_path: Path) -> None:
    Run(tmp_path, epochs=1, val_interval=1).run()
    Run(tmp_path, epochs=3, val_interval=1).run()
    assert not list(tmp_path.glob("model.pt.bak-*"))


# --- item 6: resume only the same run; one run per folder


def test_other_run_is_not_resumed(tmp_path: Path) -> None:
    Run(tmp_path, epochs=1, val_interval=1).run()
    other = {"configs": {"train.json": "a"}, "overrides": {"dataset_dir": "/data/other"}}
    with pytest.raises(ConfigError, match=r"another training run.*dataset_dir.*--resume false.*--ckpt_dir"):
        Run(tmp_path, epochs=2, run_info=other).run()
    Run(tmp_path, epochs=2, run_info=other, resume=False).run()  # the documented way out works


def test_second_concurrent_run_is_refused(tmp_path: Path) -> None:
    first = Run(tmp_path, epochs=1)
    first.resume.acquire()
    try:
        with pytest.raises(ConfigError, match=r"in use by another training run.*--ckpt_dir"):
            Run(tmp_path, epochs=1).run()
    finally:
        first.resume.release()
    Run(tmp_path, epochs=1).run()  # free again


def test_run_fingerprint_ignores_epochs_and_records_dataset(tmp_path: Path) -> None:
    base = ["monai/bundle/__main__.py", "run", "--config_file", MNIST_TRAIN]
    a = run_fingerprint([*base, "--epochs", "1", "--learning_rate", "0.1"])
    assert a == run_fingerprint([*base, "--epochs", "5"])
    assert a != run_fingerprint([*base, "--dataset_dir", str(tmp_path)])
    assert a != run_fingerprint([*base, "--output_dir", str(tmp_path)])
    assert run_fingerprint(["pytest"]) is None


# --- item 9: new epochs / learning rate on resume


def test_resume_with_new_epochs_and_lr_rebuilds_schedule(tmp_path: Path) -> None:
    Run(tmp_path, epochs=1, val_interval=1, lr=0.1).run()
    r = Run(tmp_path, epochs=3, val_interval=1, lr=0.2)
    seen: list[float] = []
    r.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(r.optimizer.param_groups[0]["lr"]))
    r.run()
    # epoch 2 of a 3-epoch cosine from 0.2 (not T_max=1 from 0.1, which would give lr 0.1 again after 2 steps)
    expected = [0.2 * (1 + torch.cos(torch.tensor(torch.pi * k / 3)).item()) / 2 for k in (1, 2)]
    assert seen == pytest.approx(expected)
    assert r.scheduler.T_max == 3 and r.scheduler.base_lrs == [0.2]


# --- items 11, 13, 14: command line


def test_unknown_override_names_closest_key() -> None:
    argv = ["monai/bundle/__main__.py", "run", "--config_file", MNIST_TRAIN]
    with pytest.raises(ConfigError, match=r"--epochz.*Did you mean --epochs"):
        check_overrides([*argv, "--epochz", "3"])
    with pytest.raises(ConfigError, match=r"--ckpt\b.*--ckpt_dir"):
        check_overrides([*argv, "--ckpt", "x.pt"])
    check_overrides([*argv, "--epochs", "3", "--train#trainer#max_epochs=2", "--run_id", "run"])
    check_overrides(["pytest", "--epochz", "3"])  # not a bundle run: nothing to check
    as_list = ["m", "run", "--config_file", f"['{MNIST_TRAIN}']"]  # the README's python-style list
    with pytest.raises(ConfigError, match="Did you mean --epochs"):
        check_overrides([*as_list, "--epochz", "3"])
    check_overrides([*as_list, "--epochs", "3"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_clear() -> None:
    argv = ["monai/bundle/__main__.py", "run", "--config_file", MNIST_TRAIN]
    with pytest.raises(ConfigError, match=r"CUDA is not available.*--device cpu"):
        check_overrides([*argv, "--device", "cuda"])
    check_overrides([*argv, "--device", "cpu"])


def test_missing_checkpoint_message_names_real_key(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"--ckpt_dir") as e:
        load_weights(tmp_path / "model.pt")
    assert "--ckpt path" not in str(e.value)


# --- item 17: the clear message is the last line


def test_bundle_error_message_is_last_line(tmp_path: Path) -> None:
    from tests.bundle_utils import run_bundle

    proc = run_bundle("mnist_mlp_classification", "train.json", check=False, epochz=3, output_dir=tmp_path)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ERROR: ConfigError: --epochz") and "--epochs" in last


def test_error_hook_prints_chained_tlk_error_last() -> None:
    code = (
        "from tlk_components.utils.runtime import install_error_hook\n"
        "from tlk_components.utils.errors import ConfigError\n"
        "install_error_hook()\n"
        "try:\n    raise ConfigError('epochs=-1: expected an integer >= 1')\n"
        "except ConfigError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "ERROR: ConfigError: epochs=-1: expected an integer >= 1"
    debug = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ, "TLK_DEBUG": "1"}
    )
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith("ERROR: ConfigError")


def test_fingerprint_is_json_serialisable() -> None:
    fp = run_fingerprint(["m", "run", "--config_file", MNIST_TRAIN, "--dataset_dir", "x"])
    assert json.loads(json.dumps(fp)) == fp


def test_weight_loader_names_file_and_keys(tmp_path: Path) -> None:
    from tlk_components.utils.io import load_state_dict_checked

    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    with pytest.raises(ConfigError, match=r"model\.pt.*size mismatch for weight.*--ckpt_dir"):
        load_state_dict_checked(torch.nn.Linear(3, 2), load_weights(path), path)


def test_bundle_short_run_saves_model_and_other_run_is_refused(tmp_path: Path) -> None:
    """mnist through ``python -m monai.bundle run``: one epoch with val_interval 3 still leaves model.pt; the same
    ckpt_dir with another --output_dir is refused instead of silently resumed."""
    from tests.bundle_utils import run_bundle
    from tlk_components.data.mnist import write_demo

    data = write_demo(tmp_path / "data", size="tiny")
    common = {"dataset_dir": data, "demo_dir": data, "ckpt_dir": tmp_path / "models"}
    run_bundle("mnist_mlp_classification", "train.json", **common, output_dir=tmp_path / "a", epochs=1, val_interval=3)
    assert (tmp_path / "models" / "model.pt").is_file()
    other = run_bundle(
        "mnist_mlp_classification", "train.json", check=False, **common, output_dir=tmp_path / "b", epochs=2
    )
    assert other.returncode != 0
    last = other.stdout.strip().splitlines()[-1]
    assert "another training run" in last and "output_dir" in last and "--resume false" in last


def test_run_fingerprint_follows_config_settings_not_epochs(tmp_path: Path) -> None:
    cfg = json.loads(Path(MNIST_TRAIN).read_text())
    f = tmp_path / "train.json"
    f.write_text(json.dumps(cfg))
    argv = ["m", "run", "--config_file", str(f)]
    before = run_fingerprint(argv)
    f.write_text(json.dumps({**cfg, "epochs": 99, "initialize": []}))  # a longer run, a bundle update's checks
    assert run_fingerprint(argv) == before
    f.write_text(json.dumps({**cfg, "network_def": {**cfg["network_def"], "dims": [784, 64, 10]}}))
    changed = run_fingerprint(argv)
    assert {k for k in before["configs"] if before["configs"][k] != changed["configs"][k]} == {"train.json#network_def"}
