# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of mnist_mlp_classification: training epoch time against two baselines, plus demo accuracy.

Measured side by side in one process, on the same training images and the same batch size:

1. **bundle** — ``configs/train.json`` run through MONAI's ``ConfigWorkflow`` exactly as ``python -m monai.bundle
   run`` does (SupervisedTrainer, in-memory ``TensorBatchLoader``, progress bar, TensorBoard, loss-curve PNG,
   validation and checkpointing after every epoch). Epoch time = wall time from ``EPOCH_STARTED`` to the end of
   all ``EPOCH_COMPLETED`` handlers (validation, checkpoints, plot included). Threads: ``configure_threads``.
2. **bare** — a plain PyTorch loop over the same in-memory tensors (random permutation, slicing, forward,
   backward, Adam step), the same network, optimizer, batch size and thread count. The floor for any framework.
3. **seed** — the tutorial's loop: a per-sample ``Dataset`` (PIL image -> ``ToTensor``-like conversion per
   ``__getitem__``, as torchvision's MNIST does) + ``DataLoader(batch_size, shuffle=False)``, torch's default
   thread count. One epoch (it is slow).

Data: ``--dataset_dir`` (real MNIST IDX files), else the demo digits tiled to MNIST's 60,000 training images, so an
epoch has MNIST's length (tiling changes no timing; it is not used for accuracy). The bundle trains on the first
90% (``val_fraction`` 0.1) and validates on the rest; the baselines train on the same 90%.

``accuracy_demo``: the bundle's default ``train.json`` then ``evaluate.json`` on the untiled demo digits, in fresh
processes (``python -m monai.bundle run``), test-split accuracy from ``metrics.json`` (skip with ``--no_accuracy``).

Usage::

    TLK_NUM_THREADS=2 python benchmarks/bench_mnist.py [--dataset_dir MNIST_DIR] [--batch_size 32] [--epochs 3]

Targets: ``bundle_vs_bare`` <= 1.5 and ``seed_vs_bundle`` >= 10. The last line printed is one JSON object with
``bundle_vs_bare`` (median bundle epoch / median bare epoch), ``seed_vs_bundle`` (seed epoch / median bundle
epoch), ``accuracy_demo`` and the detailed timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_THREADS = torch.get_num_threads()  # before anything configures threads: the seed loop's setting

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlk_components.data import mnist  # noqa: E402
from tlk_components.utils import configure_threads  # noqa: E402

BUNDLE = REPO / "bundles" / "mnist_mlp_classification"
CONFIGS = BUNDLE / "configs"


def _tiled_dataset(out: Path, n_train: int = 60000) -> Path:
    """The demo digits with the training split repeated to ``n_train`` images (MNIST's size), as IDX files."""
    demo = mnist.write_demo(out / "demo")
    images, labels = mnist.load_split(demo, "train")
    reps = -(-n_train // len(labels))
    tiled = out / "tiled"
    tiled.mkdir(parents=True, exist_ok=True)
    mnist.write_idx(tiled / "train-images-idx3-ubyte", np.tile(images, (reps, 1, 1))[:n_train])
    mnist.write_idx(tiled / "train-labels-idx1-ubyte", np.tile(labels, reps)[:n_train])
    for name in mnist.IDX_FILES["test"]:
        (tiled / f"{name}.gz").write_bytes((demo / f"{name}.gz").read_bytes())
    return tiled


def time_bundle(dataset_dir: Path, root: Path, epochs: int, batch_size: int) -> tuple[list[float], Any]:
    """Per-epoch wall times of the bundle's train.json (all handlers included); also returns the train dataset."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(dataset_dir),
        epochs=epochs,
        batch_size=batch_size,
        resume=False,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    starts: list[float] = []
    times: list[float] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: starts.append(time.perf_counter()))
    # added last, so it runs after validation, checkpointing and the loss plot
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter() - starts[-1]))
    workflow.run()
    dataset = workflow.parser.get_parsed_content("train#dataset")
    workflow.finalize()
    return times, dataset


def _network() -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    return parser.get_parsed_content("network_def", instantiate=True)


def time_bare(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, lr: float) -> list[float]:
    """Per-epoch times of a plain loop over in-memory tensors (same network, Adam, batch size, threads)."""
    torch.manual_seed(0)
    net = _network().train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(labels.shape[0])
        for i in range(0, labels.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(net(images[idx]), labels[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


class _PerSampleMNIST(torch.utils.data.Dataset):
    """The tutorial's data path: torchvision-MNIST-like ``__getitem__`` (PIL image, then ToTensor)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).float().div(255.0).unsqueeze(0)  # ToTensor
        return x, int(self.labels[i])


def time_seed(images: np.ndarray, labels: np.ndarray, batch_size: int, lr: float) -> float:
    """One epoch of the tutorial's loop at torch's default thread count."""
    configured = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    try:
        torch.manual_seed(0)
        net = _network().train()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        loader = torch.utils.data.DataLoader(_PerSampleMNIST(images, labels), batch_size=batch_size, shuffle=False)
        t0 = time.perf_counter()
        for batch, y in loader:
            opt.zero_grad()
            loss = loss_fn(net(batch), y)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(configured)


def accuracy_demo(root: Path) -> float:
    """Default train.json then evaluate.json on the demo digits, in fresh processes; test accuracy."""
    root.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for configs in ([CONFIGS / "train.json"], [CONFIGS / "train.json", CONFIGS / "evaluate.json"]):
        files = json.dumps([str(c) for c in configs])
        proc = subprocess.run([*base, "--config_file", files], capture_output=True, text=True, env=env, cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"bundle run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return float(json.loads((root / "eval" / "metrics.json").read_text())["accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset_dir", default=None, help="MNIST IDX folder (default: demo digits tiled to 60,000)")
    ap.add_argument("--batch_size", type=int, default=32, help="batch size of all three loops (default 32)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs of the bundle and the bare loop (median)")
    ap.add_argument("--no_accuracy", action="store_true", help="skip the demo train+evaluate run")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    threads = configure_threads(0)
    lr = float(json.loads((CONFIGS / "train.json").read_text())["learning_rate"])

    with tempfile.TemporaryDirectory(prefix="bench_mnist_") as tmp:
        tmp_path = Path(tmp)
        data = Path(args.dataset_dir) if args.dataset_dir else _tiled_dataset(tmp_path / "data")
        mnist.verify_dataset(data).raise_if_bad()
        print(
            f"data: {data} ({'MNIST IDX' if args.dataset_dir else 'demo digits tiled to 60,000'}); "
            f"batch size {args.batch_size}; threads: {threads} (bundle, bare), {DEFAULT_THREADS} (seed default)"
        )

        bundle_times, train_ds = time_bundle(data, tmp_path / "bundle", args.epochs, args.batch_size)
        n = len(train_ds)
        bare_times = time_bare(train_ds.images, train_ds.labels, args.epochs, args.batch_size, lr)
        raw_images, raw_labels = mnist.load_split(data, "train")
        seed_time = time_seed(raw_images[:n], raw_labels[:n], args.batch_size, lr)
        bundle_s, bare_s = statistics.median(bundle_times), statistics.median(bare_times)
        print(
            f"epoch over {n} images: bundle {bundle_s:.3f} s (median of {len(bundle_times)}), "
            f"bare loop {bare_s:.3f} s, source-document loop {seed_time:.3f} s",
            flush=True,
        )
        acc = None if args.no_accuracy else accuracy_demo(tmp_path / "demo_run")

    result = {
        "bundle_vs_bare": round(bundle_s / bare_s, 3),
        "seed_vs_bundle": round(seed_time / bundle_s, 2),
        "accuracy_demo": None if acc is None else round(acc, 4),
        "train_images": n,
        "batch_size": args.batch_size,
        "threads": threads,
        "default_threads": DEFAULT_THREADS,
        "bundle_epoch_s": [round(t, 3) for t in bundle_times],
        "bare_epoch_s": [round(t, 3) for t in bare_times],
        "seed_epoch_s": round(seed_time, 3),
    }
    print(
        f"bundle / bare = {result['bundle_vs_bare']:.2f} (target <= 1.5); "
        f"source loop / bundle = {result['seed_vs_bundle']:.1f} (target >= 10)"
    )
    if acc is not None:
        print(f"demo digits: test accuracy {acc:.4f} (default train.json + evaluate.json; target >= 0.95)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
