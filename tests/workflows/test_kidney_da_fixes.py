# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""kidney_ct_da_segmentation fixes: a new DDP shuffle every epoch, the alignment map only for its weights, the
main job's quiet terminal with its full log in a file."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.transforms import Identityd
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from tests.net_helpers import dynunet
from tlk_components import cli
from tlk_components.adaptation.entropy import EntropyPriorLoss
from tlk_components.adaptation.intensity import (
    AlignedWeightsRecorder,
    IntensityAlignd,
    ensure_alignment,
    inference_alignment,
)
from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.engines.trainers.domain_adaptation import DomainAdaptationTrainer, PairedLoader
from tlk_components.utils.errors import ConfigError, TLKError
from tlk_components.utils.io import sha256_file
from tlk_components.workflows import kidney_demo as demo


class _Indexed(torch.utils.data.Dataset):
    """Tiny target images that carry their index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 8, 8, 8), float(i)), "idx": i}


def _ddp_loader(n: int) -> DataLoader:
    # rank 0 of 2: DistributedSampler takes num_replicas/rank, no process group needed
    sampler = DistributedSampler(_Indexed(n), num_replicas=2, rank=0, shuffle=True, seed=0)
    return DataLoader(sampler.dataset, batch_size=1, sampler=sampler)


def test_paired_loader_set_epoch_reshuffles_distributed_samplers() -> None:
    src, tgt = _ddp_loader(16), _ddp_loader(12)
    paired = PairedLoader(src, tgt, epoch_length=len(tgt))  # one pass of each per epoch
    orders = []
    for epoch in (1, 2, 3):
        paired.set_epoch(epoch)
        pairs = list(paired)
        orders.append(([int(p["source"]["idx"]) for p in pairs], [int(p["target"]["idx"]) for p in pairs]))
    for name in (0, 1):
        assert len({tuple(o[name]) for o in orders}) == 3, f"{'source' if name == 0 else 'target'} order repeats"
    # the shorter loader's second pass within one epoch draws a new order too
    short = PairedLoader(None, _ddp_loader(8), epoch_length=8)  # 4 batches per rank: two passes per epoch
    short.set_epoch(1)
    idx = [int(p["target"]["idx"]) for p in short]
    assert idx[:4] != idx[4:]


def test_da_trainer_sets_the_paired_loader_epoch_under_ddp() -> None:
    torch.manual_seed(0)
    net = dynunet(filters=(2, 4, 4))
    model = TransferrableModel(
        net,
        loss_weights={"source_seg": 0.0, "encoder_adv": 0.0, "target_prior": 1.0},
        target_adapter=EntropyPriorLoss([0.8, 0.2]),
    )
    opt = torch.optim.SGD(model.param_groups(1e-3, 1e-3), lr=1e-3)
    tgt = _ddp_loader(8)
    trainer = DomainAdaptationTrainer("cpu", 2, PairedLoader(None, tgt), model, opt)
    seen: dict[int, list[int]] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.setdefault(e.state.epoch, []).extend(e.state.batch["target"]["idx"].tolist()),
    )
    trainer.run()
    assert sorted(seen) == [1, 2]
    assert seen[1] != seen[2], f"the same shuffle every epoch: {seen}"


# --- item: the intensity-alignment map only for the weights it was fitted with -----------------------------------

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "kidney_ct_da_segmentation" / "configs"


def _inference_intensity_step(ckpt_dir: Path, model_path: Path, **overrides: object) -> object:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"ckpt_dir": str(ckpt_dir), "model_path": str(model_path), **overrides})
    steps = parser.get("preprocessing#transforms")
    i = next(i for i, t in enumerate(steps) if "inference_alignment" in str(t))
    return parser.get_parsed_content(f"preprocessing#transforms#{i}")


def test_inference_applies_the_alignment_only_to_the_adapted_weights(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    align = ckpt / "intensity_alignment.json"
    align.write_text(json.dumps({"scale": 1.2, "shift": 40.0, "enabled": True}))
    torch.save({"w": torch.zeros(2)}, ckpt / "pretrained.pt")  # source-only
    torch.save({"w": torch.ones(2)}, ckpt / "oracle.pt")
    torch.save({"w": torch.full((2,), 2.0)}, ckpt / "model.pt")  # adapted with the map
    # before the adaptation run records its weights, no weights get the map
    assert isinstance(_inference_intensity_step(ckpt, ckpt / "model.pt"), Identityd)
    # the adaptation's last train handler records the weights it saved
    train = json.loads((CONFIGS / "train.json").read_text())
    targets = [h["_target_"] for h in train["train"]["handlers"]]
    assert targets[-1] == "tlk_components.adaptation.intensity.AlignedWeightsRecorder"
    assert targets.index("tlk_components.engines.handlers.checkpoint.FinalModelSaver") < len(targets) - 1
    AlignedWeightsRecorder(align, ckpt / "model.pt")(None)
    assert json.loads(align.read_text())["aligned_weights"] == {sha256_file(ckpt / "model.pt"): "model.pt"}

    with caplog.at_level(logging.INFO, logger="tlk_components.adaptation.intensity"):
        for other in ("pretrained.pt", "oracle.pt"):
            assert isinstance(_inference_intensity_step(ckpt, ckpt / other), Identityd), other
        assert "not applied" in caplog.text and "pretrained.pt" in caplog.text
        step = _inference_intensity_step(ckpt, ckpt / "model.pt")
        assert isinstance(step, IntensityAlignd) and (step.scale, step.shift) == (1.2, 40.0)
        assert "applying" in caplog.text
    # explicit override both ways; a missing file with "true" is a clear error
    assert isinstance(_inference_intensity_step(ckpt, ckpt / "pretrained.pt", align_intensity=True), IntensityAlignd)
    assert isinstance(_inference_intensity_step(ckpt, ckpt / "model.pt", align_intensity=False), Identityd)
    with pytest.raises(ConfigError, match="does not exist"):
        inference_alignment("image", tmp_path / "none.json", ckpt / "model.pt", apply=True)
    with pytest.raises(ConfigError, match="align_intensity"):
        inference_alignment("image", align, ckpt / "model.pt", apply="sometimes")
    # retraining changes model.pt: the old record no longer matches it
    torch.save({"w": torch.full((2,), 3.0)}, ckpt / "model.pt")
    assert isinstance(_inference_intensity_step(ckpt, ckpt / "model.pt"), Identityd)
    # a recomputed map (alignment switched off and on) belongs to no weights
    AlignedWeightsRecorder(align, ckpt / "model.pt")(None)
    ensure_alignment(align, [], [], enabled=False)
    assert "aligned_weights" not in json.loads(align.read_text())
    AlignedWeightsRecorder(align, ckpt / "model.pt", enabled=False)(None)  # a run without alignment records nothing
    assert "aligned_weights" not in json.loads(align.read_text())


# --- item: the main job's terminal shows progress bars and the table once; the full log goes to a file -----------

_FAKE_STAGE = r"""
import json, pathlib, sys
overrides = dict(zip(sys.argv[1::2], sys.argv[2::2]))
configs = overrides["--config_file"]
for e in range(1, 51):
    for i in range(1, 4):
        print(f"2026-01-01 - INFO - Epoch: {e}/50, Iter: {i}/3 -- train_loss: 0.5", flush=True)
    sys.stderr.write(f"\rEpoch [{e}/50]: [3/3] 100%|#####|")
if "evaluate.json" in configs:
    for name in ("pretrained.pt", "model.pt"):
        sys.stderr.write(f"\revaluate {name}:  50%|##  | 1/2\revaluate {name}: 100%|####| 2/2")
    sys.stderr.write("\n")
    sys.stderr.flush()
    table = "| model | target kidney Dice (mean over 2 cases) |\n|---|---|\n| source_only | 0.5 |\n| adapted | 0.7 |"
    out = pathlib.Path(overrides["--output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "dice_table.md").write_text(table + "\n")
    print(table)
if "FAIL" in str(overrides.get("--device")):
    print("ERROR: something broke in this stage", flush=True)
    sys.exit(3)
"""


def _fake_bundle_command(configs, overrides):
    args = ["--config_file", " ".join(str(c) for c in configs)]
    for k, v in overrides.items():
        args += [f"--{k}", str(v)]
    return [sys.executable, "-c", _FAKE_STAGE, *args]


def test_main_job_logs_to_a_file_and_shows_bars_and_the_table_once(tmp_path: Path, monkeypatch, capfd) -> None:
    monkeypatch.setattr(demo, "bundle_command", _fake_bundle_command)
    monkeypatch.setattr(demo, "_FORK_STAGES", False)  # the subprocess path (no fork server), with fake stages
    out = tmp_path / "job"
    (out / "demo_data").mkdir(parents=True)
    (out / "demo_data" / "x").write_text("already written")
    monkeypatch.setattr(sys, "argv", ["tlk"])
    cli.main(["kidney_demo", "--out_dir", str(out)])
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    log = (out / "logs" / "main_job.log").read_text()
    assert terminal.count("| model |") == 1 and "| adapted | 0.7 |" in captured.out
    assert "INFO" not in terminal and "Epoch" not in terminal  # the stages' chatter is in the log only
    assert (
        log.count("Iter: 3/3") == 3 * 50
        and len(re.findall(r"(?m)^\| model \|", log)) == 1
        and "##### main job done" in log
    )
    lines = [ln for ln in terminal.replace("\r", "\n").splitlines() if ln.strip()]
    for stage in ("source pretraining", "label-free adaptation", "target evaluation"):
        assert any(stage in ln and "100%" in ln for ln in lines), stage
    assert str(out / "logs" / "main_job.log") in terminal
    # a failing stage: its last lines and the log's path, no traceback
    with pytest.raises(
        TLKError, match=r"(?s)stage 'source pretraining' failed \(exit 3\).*something broke.*main_job\.log"
    ):
        demo.run_demo(str(out), device="FAIL")
    assert (out / "logs" / "main_job.log").read_text().count("##### main job ") == 3  # appended: two headers + done


@pytest.mark.slow
def test_main_job_tiny_run_terminal_and_log(tmp_path: Path, monkeypatch, capfd) -> None:
    monkeypatch.setenv("TLK_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["tlk"])
    cli.main(
        ["kidney_demo", "--out_dir", str(tmp_path), "--size", "tiny", "--pretrain_epochs", "1", "--adapt_epochs", "1"]
    )
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    log = (tmp_path / "logs" / "main_job.log").read_text()
    assert terminal.count("| model |") == 1 and "| adapted |" in captured.out
    assert " - INFO - " not in terminal and "Epoch: 1/1" in log and " - INFO - " in log
    assert "| model |" in log  # the evaluation stage's own table is kept in the log
    assert len([ln for ln in terminal.replace("\r", "\n").splitlines() if ln.strip()]) < 200
    assert "adapter: loss terms target_prior 1, pseudo_label 1; pseudo-label teacher fixed" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    # on Linux the stages are fork-server children; the log keeps the equivalent CLI command of each stage
    assert demo._FORK_STAGES == sys.platform.startswith("linux")
    assert log.count("-m monai.bundle run --config_file") == 3
    # a stage failing in the child: exit status, its last lines (the bundle's error naming the key) and the log
    with pytest.raises(TLKError, match=r"(?s)stage 'source pretraining' failed \(exit 1\).*device.*main_job\.log"):
        demo.run_demo(str(tmp_path), size="tiny", pretrain_epochs=1, adapt_epochs=1, device="FAIL")


def test_follow_yields_the_lines_a_stage_appends(tmp_path: Path) -> None:
    """The main job follows a stage's output in the log: whole lines as they come, the unterminated rest at the end,
    nothing from before the stage started."""
    log = tmp_path / "job.log"
    log.write_bytes(b"header\n")

    class Stage:
        calls = 0

        def running(self) -> bool:
            Stage.calls += 1
            with open(log, "ab") as f:
                f.write({1: b"Epoch: 1/2, Iter: 1", 2: b"/1\nframe\rframe2\n", 3: b"last"}.get(Stage.calls, b""))
            return Stage.calls < 4

        def wait(self) -> int:
            return 0

        def kill(self) -> None:
            pass

    lines = list(demo._follow(log, len(b"header\n"), Stage()))
    assert lines == [b"Epoch: 1/2, Iter: 1/1\n", b"frame\rframe2\n", b"last"]
