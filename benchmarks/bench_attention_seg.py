# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of ``abdomen_ct_attention_segmentation``: accuracy, sliding-window overhead and inference memory.

What it measures, side by side in one run (CPU by default):

1. **Dice on held-out demo cases** for both networks. The bundle itself is run through
   ``python -m monai.bundle run`` (``train.json``, then ``train.json + evaluate.json``; the Attention U-Net with
   ``train_attention_unet.json`` layered on) on the deterministic demo phantoms: 24 training cases, evaluated on the
   6 validation cases, which are never trained on; validation runs only after the last epoch, so no checkpoint is
   chosen on them. Target: mean Dice >= 0.85 for both.
2. **Sliding-window overhead**: the time of MONAI's ``sliding_window_inference`` (Gaussian blending, the bundle's
   ``patch_size`` / ``overlap`` / ``sw_batch_size``) on a preprocessed demo case, divided by the time of the bare
   network forward over exactly the same patches (recorded during a sliding-window pass). Target <= 1.2x.
3. **Peak memory of inference** on a 256x256x128 CT volume on CPU: ``inference.json`` is run in a fresh process on a
   phantom of that size, with ``--spacing`` set to its own spacing so that the network sees all 256x256x128 voxels;
   the peak resident set size of that process is reported (it includes Python, torch and MONAI). Target <= 4 GB.

Usage::

    env TLK_NUM_THREADS=2 python benchmarks/bench_attention_seg.py --out /tmp/abd_bench

The last line printed is one JSON object: ``dice_unet``, ``dice_attention_unet``, ``sw_ratio``, ``peak_rss_gb``
(plus the settings and timings).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlk_components.zoo.runner import run_bundle

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "abdomen_ct_attention_segmentation"
CONFIGS = BUNDLE / "configs"


def _run_bundle(configs: list[str], log: Path, **overrides: Any) -> float:
    """Run the bundle in a subprocess; return its wall time. Raises with the log tail on failure."""
    return run_bundle([CONFIGS / c for c in configs], log, overrides, cwd="/tmp")


def train_and_evaluate(name: str, variant: list[str], data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train one network on the demo training cases and evaluate it on the held-out validation cases."""
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "dataset_dir": str(data),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "eval"),
    }
    if args.threads is not None:
        common["num_threads"] = args.threads
    for key in ("channels", "patch_size", "learning_rate"):  # the bundle's own recipe unless overridden
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    t_train = _run_bundle(
        ["train.json", *variant], run_dir / "train.log", epochs=args.epochs, val_interval=args.epochs, **common
    )
    t_eval = _run_bundle(["train.json", *variant, "evaluate.json"], run_dir / "evaluate.log", **common)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    print(
        f"{name:20s} mean Dice {metrics['mean_dice']:.4f}  mean HD95 {metrics['mean_hd95_mm']:.2f} mm  "
        f"(train {t_train:.0f} s, evaluate {t_eval:.0f} s)",
        flush=True,
    )
    for organ, value in metrics["dice_per_organ"].items():
        print(f"    {organ:32s} {value if value is not None else float('nan'):.4f}")
    return {"metrics": metrics, "train_s": t_train, "eval_s": t_eval}


def sliding_window_overhead(data: Path, ckpt: Path, args: argparse.Namespace) -> dict:
    """Time MONAI's Gaussian sliding window against the bare forward over the same patches."""
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference

    from tlk_components.data.btcv import btcv_datalist
    from tlk_components.utils import configure_threads, load_weights

    threads = configure_threads(args.threads)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(data), "bundle_root": str(BUNDLE), "ckpt_dir": str(Path(ckpt).parent)})
    if args.channels is not None:
        parser["channels"] = args.channels
    if args.patch_size is not None:
        parser["patch_size"] = args.patch_size
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(load_weights(ckpt))
    transform = parser.get_parsed_content("validate#preprocessing")
    case = btcv_datalist(data, "validation")[0]
    image = transform(case)["image"][None].as_tensor()
    roi = parser.get_parsed_content("patch_size")  # the plan training wrote next to the weights, unless overridden
    sw_batch, overlap = parser["sw_batch_size"], parser["sw_overlap"]

    patches: list[torch.Tensor] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        patches.append(x.clone())
        return net(x)

    with torch.no_grad():
        sliding_window_inference(image, roi, sw_batch, recording, overlap=overlap, mode="gaussian")
        sw_times, bare_times = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            sliding_window_inference(image, roi, sw_batch, net, overlap=overlap, mode="gaussian")
            sw_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            for p in patches:
                net(p)
            bare_times.append(time.perf_counter() - t)
    sw, bare = float(np.median(sw_times)), float(np.median(bare_times))
    n_windows = sum(p.shape[0] for p in patches)
    print(
        f"sliding window: {sw:.3f} s per case ({tuple(image.shape[2:])}, {n_windows} windows of {tuple(roi)}), "
        f"bare forward over the same patches {bare:.3f} s, ratio {sw / bare:.3f}x",
        flush=True,
    )
    return {
        "sw_s": sw,
        "bare_s": bare,
        "sw_ratio": sw / bare,
        "windows": n_windows,
        "image_shape": list(image.shape[2:]),
        "roi": list(roi),
        "channels": list(parser["channels"]),
        "threads": threads,
    }


def inference_memory(out: Path, ckpt_dir: Path, args: argparse.Namespace) -> dict:
    """Peak RSS of inference.json on a 256x256x128 phantom, in a fresh process."""
    from tlk_components.data.btcv import BTCV_STYLE
    from tlk_components.data.nifti_checks import save_nifti
    from tlk_components.data.phantoms import FOV_MM, generate_phantom

    shape = tuple(args.big_shape)
    spacing = tuple(f / s for f, s in zip(FOV_MM, shape, strict=True))
    big_dir = out / "big_input"
    ph = generate_phantom(BTCV_STYLE.replace(spacing=spacing), seed=0, case_index=100)
    save_nifti(ph.image_nifti(), big_dir / "img0100.nii.gz")
    if tuple(ph.image.shape) != shape:
        raise SystemExit(f"phantom shape {ph.image.shape} != {shape}")
    code = (
        "import resource, runpy, sys; sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\n"
        "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    )
    cmd = [
        sys.executable, "-c", code, "run", "--config_file", str(CONFIGS / "inference.json"),
        "--input_dir", str(big_dir), "--output_dir", str(out / "big_pred"), "--ckpt_dir", str(ckpt_dir),
        "--dataset_dir", str(out / "demo"), "--spacing", json.dumps([round(s, 6) for s in spacing]),
        "--device", "cpu",
    ]  # fmt: skip
    cmd += ["--num_threads", str(args.threads)] if args.threads is not None else []
    cmd += ["--channels", json.dumps(args.channels)] if args.channels is not None else []
    cmd += ["--patch_size", json.dumps(args.patch_size)] if args.patch_size is not None else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd="/tmp", capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"inference failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
    pred = out / "big_pred" / "img0100_seg.nii.gz"
    if not pred.is_file():
        raise SystemExit(f"inference wrote no prediction {pred}")
    gb = kb / 1024**2
    print(f"inference on a {shape} volume: peak RSS {gb:.2f} GB, {wall:.1f} s (whole process)", flush=True)
    return {"peak_rss_gb": gb, "inference_s": wall, "shape": list(shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/abd_bench"))
    ap.add_argument("--epochs", type=int, default=100)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--channels", type=ints, default=None, help="default: train.json's")
    ap.add_argument("--patch_size", type=ints, default=None, help="default: the plan's (models/plans.json)")
    ap.add_argument("--learning_rate", type=float, default=None, help="default: train.json's")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: configure_threads decides)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip_train", action="store_true", help="reuse the models already in --out")
    ap.add_argument(
        "--reuse", action="store_true", help="reuse finished networks in --out; an unfinished training resumes"
    )
    ap.add_argument("--data_size", choices=("demo", "tiny"), default="demo", help="tiny: a quick smoke run only")
    ap.add_argument("--big_shape", type=lambda s: [int(v) for v in s.split(",")], default=[256, 256, 128])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    from tlk_components.data.btcv import write_demo

    data = args.out / "demo"
    if not (data / "dataset.json").is_file():
        write_demo(data, size=args.data_size, seed=0)
    results: dict[str, Any] = {}
    for name, variant in (("unet", []), ("attention_unet", ["train_attention_unet.json"])):
        done = args.out / name / "eval" / "metrics.json"
        if args.skip_train or (args.reuse and done.is_file()):
            results[name] = {"metrics": json.loads(done.read_text())}
            print(f"{name}: reusing {done}", flush=True)
        else:
            results[name] = train_and_evaluate(name, variant, data, args.out, args)
    sw = sliding_window_overhead(data, args.out / "unet" / "models" / "model.pt", args)
    mem = inference_memory(args.out, args.out / "unet" / "models", args)
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    summary = {
        "dice_unet": round(results["unet"]["metrics"]["mean_dice"], 4),
        "dice_attention_unet": round(results["attention_unet"]["metrics"]["mean_dice"], 4),
        "hd95_mm_unet": round(results["unet"]["metrics"]["mean_hd95_mm"], 2),
        "hd95_mm_attention_unet": round(results["attention_unet"]["metrics"]["mean_hd95_mm"], 2),
        "sw_ratio": round(sw["sw_ratio"], 3),
        "sw_s_per_case": round(sw["sw_s"], 3),
        "peak_rss_gb": round(mem["peak_rss_gb"], 3),
        "inference_256x256x128_s": round(mem["inference_s"], 1),
        "train_s": {k: round(v.get("train_s", 0.0), 1) for k, v in results.items()},
        "epochs": args.epochs,
        "channels": sw["channels"],
        "patch_size": sw["roi"],
        "threads": sw["threads"],
        "benchmark_rss_gb": round(rss_self, 3),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(
        f"targets: Dice >= 0.85 (unet {summary['dice_unet']}, attention {summary['dice_attention_unet']}); "
        f"sw ratio <= 1.2 ({summary['sw_ratio']}); peak RSS <= 4 GB ({summary['peak_rss_gb']})"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
