# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of ``brats_mri_box_localization`` on held-out demo volumes, run through the bundle's own configs.

1. **Training**: ``python -m monai.bundle run`` with the bundle's ``train.json`` as it ships (its epochs, validation
   interval and model selection on the validation split; ``--epochs`` only when asked), on the demo data written by
   the bundle's own first-use step into ``OUT/data`` (24 BraTS-2020-layout cases).
2. **Accuracy** on the **test split** (5 cases never used for training or model selection): ``train.json`` +
   ``evaluate.json``, the bundle's evaluation command; its ``metrics.json`` gives the median per-volume IoU (missed
   tumours count as IoU 0), AP at IoU 0.1 and 0.5, box sensitivity and PPV; ``volume_iou.csv`` the per-volume rows.
3. **Inference cost**: the network, box parameters, score threshold and dataset are taken from the bundle's
   ``inference.json`` (parsed with MONAI's ``ConfigParser``, the trained ``model.pt`` loaded). The box evaluator as
   inference.json runs it (label-free volumes: network + decoding + NMS, without writing files) is timed against
   the bare network forward pass over the same slices in the same chunks, same thread count (minimum over
   ``--repeats``); target ratio <= 1.3.

Targets: median IoU >= 0.75, AP@0.5 >= 0.8, inference/forward <= 1.3.
The last printed line is one JSON object with ``median_iou``, ``ap_50`` and ``infer_ratio`` (plus details).

Usage::

    env TLK_NUM_THREADS=2 python benchmarks/bench_brats_box.py --out /tmp/brats_bench
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader

from tlk_components.data.brats import BratsVolumeDataset, brats_datalist
from tlk_components.engines.evaluators.box import BoxEvaluator
from tlk_components.utils import configure_threads
from tlk_components.utils.io import load_weights
from tlk_components.zoo.runner import run_bundle

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "brats_mri_box_localization" / "configs"


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _volume_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def inference_cost(overrides: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Time inference.json's box evaluator (no file writing) against the bare forward on the same slice chunks."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(overrides)
    params = parser.get_parsed_content("box_params")
    device = parser.get_parsed_content("device")
    net = parser.get_parsed_content("network")
    net.load_state_dict(load_weights(Path(overrides["ckpt_dir"]) / "model.pt", map_location=device))
    items = brats_datalist(overrides["dataset_dir"], "test")
    dataset = BratsVolumeDataset(
        items,
        image_size=parser.get_parsed_content("image_size"),
        max_slices=parser.get_parsed_content("max_slices"),
        with_label=False,
    )
    evaluator = BoxEvaluator(
        device,
        DataLoader(dataset, batch_size=1),
        net,
        params,
        score_threshold=parser.get_parsed_content("score_threshold"),
    )
    chunk = evaluator.slice_batch_size
    volumes = [v["image"] for v in dataset.volumes]
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
        evaluator.run()
        if device.type == "cuda":
            torch.cuda.synchronize()

    bare()  # warm-up
    t_bare = _time(bare, repeats)
    t_full = _time(full, repeats)
    return {
        "infer_slices_per_s": round(n_slices / t_full, 1),
        "forward_slices_per_s": round(n_slices / t_bare, 1),
        "infer_ratio": round(t_full / t_bare, 3),
        "test_cases": [d["case"] for d in items],
        "device": str(device),
    }


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/tlk_bench_brats", help="work folder (data/, models/, eval/, logs)")
    ap.add_argument("--epochs", type=int, default=None, help="override train.json's epochs (default: the config's)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (minimum taken)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: TLK_NUM_THREADS / the rule)")
    args = ap.parse_args()

    threads = configure_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    common: dict[str, Any] = {
        "dataset_dir": str(data),
        "demo_dir": str(data),  # the bundle writes its demo here on first use
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "eval"),
    }
    if args.threads is not None:
        common["num_threads"] = args.threads
    train_overrides = {**common, **({"epochs": args.epochs} if args.epochs is not None else {})}
    train_s = run_bundle([CONFIGS / "train.json"], out / "train.log", train_overrides)
    print(f"train.json: {train_s:.0f} s ({threads} threads)", flush=True)
    eval_s = run_bundle([CONFIGS / "train.json", CONFIGS / "evaluate.json"], out / "evaluate.log", common)
    m = json.loads((out / "eval" / "metrics.json").read_text())
    for row in _volume_rows(out / "eval" / "volume_iou.csv"):
        print(
            f"  {row['case']}: gt boxes {row['gt_boxes']}, predicted {row['pred_boxes']}, "
            f"IoU median {row['iou_median']}"
        )
    cost = inference_cost(
        {"dataset_dir": str(data), "demo_dir": str(data), "ckpt_dir": str(out / "models")}, args.repeats
    )
    print(
        f"bare forward: {cost['forward_slices_per_s']} slices/s; inference (forward + decode + NMS): "
        f"{cost['infer_slices_per_s']} slices/s; ratio {cost['infer_ratio']} (target <= 1.3)"
    )
    result = {
        "median_iou": round(float(m["volume_iou_median"]), 4),
        "iou_p25": round(float(m["volume_iou_p25"]), 4),
        "iou_p75": round(float(m["volume_iou_p75"]), 4),
        "ap_10": round(float(m["AP_IoU_0.10_MaxDet_100"]), 4),
        "ap_50": round(float(m["AP_IoU_0.50_MaxDet_100"]), 4),
        "sensitivity_50": round(float(m["box_sensitivity_IoU_0.50"]), 4),
        "ppv_50": round(float(m["box_ppv_IoU_0.50"]), 4),
        **cost,
        "epochs": args.epochs
        if args.epochs is not None
        else ConfigParser.load_config_file(CONFIGS / "train.json")["epochs"],
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "threads": threads,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
