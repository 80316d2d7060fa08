# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""mnist's ``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` (gloo on CPU) equals one process.

Why the two runs must agree: the multi-process config shards each epoch's permutation (the same on every rank,
seeded by ``seed + epoch``) by position, rank ``r`` taking positions ``r, r + 2, ...``. With ``B`` samples per rank,
the union of the two ranks' k-th batches is positions ``[2kB, 2(k+1)B)`` of the permutation, exactly the k-th batch
of a single process with batch size ``2B``. DDP averages the two ranks' mean-loss gradients, which is the mean-loss
gradient of that union; the MLP has no dropout or batch norm, so Adam takes the same steps up to float rounding.

Both runs go through the real ``python -m monai.bundle run``; a ``finalize`` override on the command line (the only
test-specific part) writes each rank's trainer state and a weight checksum, to show that both ranks stepped.
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

from tlk_components.data.registry import get_data_module
from tlk_components.zoo.registry import list_bundles

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "mnist_mlp_classification"
CONFIGS = REPO / "bundles" / BUNDLE / "configs"
PER_RANK_BATCH = 27  # tiny data: 300 train images, 10% held out -> 270 = 2 ranks x 5 batches x 27

PROBE = (
    "$tlk_components.utils.atomic_write_json(os.path.join(@output_dir, 'rank%d.json' % "
    "(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)), "
    "{'iteration': @train#trainer.state.iteration, 'epoch': @train#trainer.state.epoch, "
    "'world_size': torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1, "
    "'param_sum': float(sum(p.detach().double().sum() for p in @network.parameters()))})"
)
DESTROY = "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(
        BUNDLE not in list_bundles() or not (CONFIGS / "multi_gpu_train.json").is_file(),
        reason=f"{BUNDLE} with multi_gpu_train.json not present",
    ),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available"),
]


def _overrides(data: Path, out: Path, batch_size: int, finalize: list[str]) -> list[str]:
    return [
        "--dataset_dir", str(data),
        "--ckpt_dir", str(out / "models"),
        "--output_dir", str(out / "eval"),
        "--epochs", "2",
        "--batch_size", str(batch_size),
        "--resume", "False",
        "--finalize", json.dumps(finalize),
    ]  # fmt: skip


def _run(cmd: list[str], cwd: Path) -> str:
    # CPU processes with gloo even on a GPU machine (two ranks must not share one GPU)
    env = dict(os.environ, TLK_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{out[-6000:]}"
    return out


def test_two_process_gloo_training_equals_single_process(tmp_path):
    data = get_data_module(BUNDLE).write_demo(tmp_path / "data", size="tiny")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    dist_out, single_out = tmp_path / "ddp", tmp_path / "single"
    _run(
        [*launcher, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
         "--config_file", json.dumps(files), *_overrides(data, dist_out, PER_RANK_BATCH, [PROBE, DESTROY])],
        cwd,
    )  # fmt: skip
    _run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json"),
         *_overrides(data, single_out, 2 * PER_RANK_BATCH, [PROBE])],
        cwd,
    )  # fmt: skip

    ranks = [json.loads((dist_out / "eval" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((single_out / "eval" / "rank0.json").read_text())
    # both ranks stepped: each ran every iteration of both epochs, in a world of 2
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["epoch"] for r in ranks] == [2, 2]
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == single["iteration"] == 2 * 5
    # DDP kept the replicas identical, and they equal the single-process model
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], abs=1e-9)
    assert ranks[0]["param_sum"] == pytest.approx(single["param_sum"], abs=1e-4)

    # checkpoints: written on rank 0 only, without DDP's "module." prefix, equal to the single-process weights
    ddp_ckpt = torch.load(dist_out / "models" / "checkpoint_last.pt", weights_only=True)
    one_ckpt = torch.load(single_out / "models" / "checkpoint_last.pt", weights_only=True)
    assert ddp_ckpt["trainer"] == one_ckpt["trainer"] == {"epoch": 2, "iteration": 10}
    assert sorted(ddp_ckpt["model"]) == sorted(one_ckpt["model"])
    assert not any(k.startswith("module.") for k in ddp_ckpt["model"])
    for k, w in one_ckpt["model"].items():
        torch.testing.assert_close(ddp_ckpt["model"][k], w, atol=2e-5, rtol=1e-4, msg=f"weight {k}")
    initial = torch.load(dist_out / "models" / "model.pt", weights_only=True)
    assert set(initial) == set(one_ckpt["model"])
    assert sorted(p.name for p in (dist_out / "models").iterdir() if not p.name.startswith(".")) == [
        "checkpoint_last.pt",
        "model.pt",
    ]  # .lock: the one-run-per-folder lock
