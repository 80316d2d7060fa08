# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of the BraTS box-localization pipeline on held-out demo volumes (a script, not a test).

1. Writes the demo dataset (``write_demo(size="demo", seed=0)``: 24 synthetic cases of 96x96x40) unless present.
2. Trains ``BoxFPN`` with the bundle's settings (Adam 2e-4, focal + smooth-L1, random flips) on the training split.
3. Evaluates on the **test split** (5 cases never used for training or model selection): median per-volume IoU
   (the tutorial's metric, missed tumours penalised), AP at IoU 0.1 and 0.5, box sensitivity and PPV.
4. Times inference as inference.json runs it (``BoxEvaluator`` on label-free volumes, score threshold 0.5: network
   + decoding + NMS, without writing files) against the bare network forward pass on the same slices, same
   chunks, same thread count; prints slices/s and the ratio (target <= 1.3).

Targets from the issue: median IoU >= 0.75, AP@0.5 >= 0.8, inference/forward <= 1.3.
The last printed line is one JSON object with ``median_iou``, ``ap_50`` and ``infer_ratio`` (plus details).

Usage::

    env TLK_NUM_THREADS=2 python benchmarks/bench_brats_box.py --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.transforms import Compose, RandFlipd, RandRotate90d
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import BoxTargetsd
from tlk_components.data.brats import BratsSliceDataset, BratsVolumeDataset, brats_datalist, write_demo
from tlk_components.engines.evaluators.box import BoxEvaluator
from tlk_components.engines.evaluators.box_metrics import BoxAveragePrecision, BoxPPV, BoxSensitivity, VolumeIoU
from tlk_components.engines.trainers.box import BoxTrainer
from tlk_components.losses.focal import BoxLocalizationLoss
from tlk_components.networks.fpn import BoxFPN
from tlk_components.utils import atomic_torch_save, configure_threads

__all__ = ["main"]


def _params() -> BoxParams:
    # the bundle's train.json values
    return BoxParams(
        image_shape=(96, 96),
        classes=1,
        levels=(2, 3),
        anchor_shapes=(12, 24),
        anchor_scales=(0, 1, 2),
        anchor_ratios=(0.5, 1, 2),
        iou_upper=0.5,
        iou_lower=0.2,
        iou_nms=0.3,
    )


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="/tmp/tlk_bench_brats/data")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save_weights", default="", help="also save the trained state_dict here")
    args = ap.parse_args()

    threads = configure_threads()
    set_determinism(seed=args.seed)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        write_demo(data_dir, size="demo", seed=0)
    params = _params()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    transform = Compose(
        [
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
            RandRotate90d(keys=["image", "label"], prob=0.5),
            BoxTargetsd(keys="label", params=params),
        ]
    )
    train_ds = BratsSliceDataset(brats_datalist(data_dir, "train"), image_size=(96, 96), transform=transform)
    test_items = brats_datalist(data_dir, "test")
    test_ds = BratsVolumeDataset(test_items, image_size=(96, 96))
    net = BoxFPN(params).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    trainer = BoxTrainer(
        device,
        args.epochs,
        DataLoader(train_ds, batch_size=args.batch_size, shuffle=True),
        net,
        opt,
        BoxLocalizationLoss(),
    )
    t0 = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - t0
    print(
        f"trained {args.epochs} epochs on {len(train_ds)} slices in {train_s:.0f} s ({threads} threads, {device}); "
        f"last loss {float(trainer.state.output['loss']):.4f}"
    )

    if args.save_weights:
        atomic_torch_save(net.state_dict(), args.save_weights)
    vi = VolumeIoU()
    metrics = {"ap_10": BoxAveragePrecision(0.1), "sens": BoxSensitivity(0.5), "ppv": BoxPPV(0.5), "vi": vi}
    loader = DataLoader(test_ds, batch_size=1)
    evaluator = BoxEvaluator(
        device, loader, net, params, key_val_metric={"ap_50": BoxAveragePrecision(0.5)}, additional_metrics=metrics
    )
    evaluator.run()
    m = evaluator.state.metrics
    for row in vi.table:
        print(
            f"  {row['case']}: gt boxes {row['gt_boxes']:3d}, predicted {row['pred_boxes']:3d}, IoU median "
            f"{row['iou_median']:.3f} (p25 {row['iou_p25']:.3f}, p75 {row['iou_p75']:.3f})"
        )

    # throughput, inference setting (inference.json): label-free volumes, score threshold params.cls_threshold.
    # bare forward vs forward + decode + NMS on the same slices and chunks
    infer_ds = BratsVolumeDataset(test_items, image_size=(96, 96), with_label=False)
    infer_loader = DataLoader(infer_ds, batch_size=1)
    timing_eval = BoxEvaluator(device, infer_loader, net, params, score_threshold=params.cls_threshold)
    chunk = timing_eval.slice_batch_size
    volumes = [v["image"] for v in infer_ds.volumes]
    n_slices = sum(v.shape[0] for v in volumes)
    net.eval()

    def bare() -> None:
        with torch.no_grad():
            for v in volumes:
                for s in range(0, v.shape[0], chunk):
                    net(v[s : s + chunk].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    def full() -> None:
        timing_eval.run()
        if device.type == "cuda":
            torch.cuda.synchronize()

    bare()  # warm-up
    t_bare = _time(bare, args.repeats)
    t_full = _time(full, args.repeats)
    ratio = t_full / t_bare
    print(
        f"bare forward: {n_slices / t_bare:.1f} slices/s; inference (forward + decode + NMS): "
        f"{n_slices / t_full:.1f} slices/s; ratio {ratio:.3f} (target <= 1.3)"
    )
    result = {
        "median_iou": round(float(m["volume_iou_median"]), 4),
        "iou_p25": round(float(m["volume_iou_p25"]), 4),
        "iou_p75": round(float(m["volume_iou_p75"]), 4),
        "ap_10": round(float(m["ap_10"]), 4),
        "ap_50": round(float(m["ap_50"]), 4),
        "sensitivity_50": round(float(m["sens"]), 4),
        "ppv_50": round(float(m["ppv"]), 4),
        "infer_slices_per_s": round(n_slices / t_full, 1),
        "forward_slices_per_s": round(n_slices / t_bare, 1),
        "infer_ratio": round(ratio, 3),
        "epochs": args.epochs,
        "train_s": round(train_s, 1),
        "test_cases": [d["case"] for d in test_items],
        "device": str(device),
        "threads": threads,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
