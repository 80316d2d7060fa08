# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Every bundle's ``multi_gpu_train.json`` (layered on ``train.json``) under ``torchrun --nproc_per_node=2``.

Two gloo processes on CPU, tiny demo data, one epoch, through the real ``python -m monai.bundle run``. A
``finalize`` override (the only test-specific part) writes each rank's world size, so the test shows that both
ranks joined one process group and got to the end; the trained weights must exist once. mnist's two-process run is
compared against one process in ``tests/bundles/test_multi_gpu_dist.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tlk_components.zoo.registry import list_bundles

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"

PROBE = (
    "$tlk_components.utils.atomic_write_json(os.path.join(@output_dir, 'rank%d.json' % torch.distributed.get_rank()), "
    "{'world_size': torch.distributed.get_world_size(), 'rank': torch.distributed.get_rank()})"
)
DESTROY = "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"
PROBE_IMPORTS = ["$import os", "$import torch", "$import tlk_components.utils"]

pytestmark = [
    pytest.mark.dist,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available"),
]


def _needs(bundle: str) -> pytest.MarkDecorator:
    present = bundle in list_bundles() and (BUNDLES / bundle / "configs" / "multi_gpu_train.json").is_file()
    return pytest.mark.skipif(not present, reason=f"{bundle} with multi_gpu_train.json not present")


def _torchrun(bundle: str, configs: list[str], tmp_path: Path, **overrides: object) -> str:
    """Run ``configs`` of ``bundle`` in 2 gloo processes; returns the output; checks both ranks finished."""
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs]
    out = Path(str(overrides["output_dir"]))
    merged = ConfigParser()
    merged.read_config(files)
    imports = list(merged.get("imports", [])) + PROBE_IMPORTS
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", json.dumps(files), "--imports", json.dumps(imports),
           "--finalize", json.dumps([PROBE, DESTROY])]  # fmt: skip
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, list | dict) else str(v)]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    # CPU processes with gloo even on a GPU machine (two ranks must not share one GPU)
    env = dict(os.environ, TLK_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{log[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    return log


@_needs("kidney_ct_da_segmentation")
def test_kidney_adaptation_two_processes(tmp_path: Path) -> None:
    from tlk_components.data import kidney

    bundle = "kidney_ct_da_segmentation"
    data = kidney.write_demo(tmp_path / "data", size="tiny", seed=0)
    models = tmp_path / "models"
    models.mkdir()
    # adaptation starts from source weights: an untrained network of the same definition is enough here
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), models / "pretrained.pt")
    _torchrun(
        bundle,
        ["train.json", "multi_gpu_train.json"],
        tmp_path,
        dataset_dir=data,
        demo_dir=data,
        ckpt_dir=models,
        output_dir=tmp_path / "eval",
        patch_size=[16, 16, 16],
        epochs=1,
        epoch_length=2,
        batch_size=1,
        amp=False,
    )
    assert (models / "model.pt").is_file()
    # the default adapter (self-training with a fixed teacher, under DDP) changed the weights and used no alignment
    before, after = (
        torch.load(models / "pretrained.pt", weights_only=True),
        torch.load(models / "model.pt", weights_only=True),
    )
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((models / "intensity_alignment.json").read_text())["enabled"] is False


@_needs("abdomen_ct_attention_segmentation")
def test_abdomen_two_processes(tmp_path: Path) -> None:
    from tlk_components.data.btcv import write_demo

    data = write_demo(tmp_path / "data", size="tiny", seed=0)
    _torchrun(
        "abdomen_ct_attention_segmentation",
        ["train.json", "multi_gpu_train.json"],
        tmp_path,
        dataset_dir=data,
        ckpt_dir=tmp_path / "models",
        output_dir=tmp_path / "eval",
        spacing=[8.1, 8.1, 10.8],
        patch_size=[16, 16, 16],
        channels=[4, 8, 16],
        num_samples=1,
        batch_size=1,
        cache_rate=0.0,
        epochs=1,
        val_interval=1,
    )
    assert (tmp_path / "models" / "model.pt").is_file()


@_needs("brats_mri_box_localization")
def test_brats_two_processes(tmp_path: Path) -> None:
    from tlk_components.data import brats

    data = brats.write_demo(tmp_path / "data", size="tiny", seed=0)
    _torchrun(
        "brats_mri_box_localization",
        ["train.json", "multi_gpu_train.json"],
        tmp_path,
        dataset_dir=data,
        demo_dir=data,
        ckpt_dir=tmp_path / "models",
        output_dir=tmp_path / "eval",
        batch_size=4,
        epochs=1,
        val_interval=1,
    )
    assert (tmp_path / "models" / "model.pt").is_file()


@_needs("cotraining_classification")
def test_cotraining_two_processes(tmp_path: Path) -> None:
    from tlk_components.data.cotraining import write_demo

    data = write_demo(tmp_path / "data", size="tiny")
    _torchrun(
        "cotraining_classification",
        ["train.json", "multi_gpu_train.json"],
        tmp_path,
        dataset_dir=data,
        demo_dir=data,
        ckpt_dir=tmp_path / "models",
        output_dir=tmp_path / "eval",
        iterations=1,
        epochs=1,
        k=10,
        batch_size=8,
    )
    assert any((tmp_path / "models").glob("*.pt"))
