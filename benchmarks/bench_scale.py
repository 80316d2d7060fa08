# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Scale benchmark of ``kidney_ct_da_segmentation`` on real-size phantoms (512 x 512 in-plane, real spacing).

Every step goes through the bundle's own configs (``train.json`` + ``pretrain.json``, ``inference.json``, read
with ``monai.bundle.ConfigParser``), on ``--n_cases`` AMOS22-like + KiTS19-like adult phantoms per domain written
with ``kidney.write_amos22`` / ``kidney.write_kits19(..., size="real")`` (generation is timed apart and is not part
of any figure; existing complete data in ``--data_dir`` are reused). What it measures, in one process:

1. **Plan**: ``plans.json`` with the bundle's ``plan_max_patch_voxels`` / ``plan_memory_voxels`` read from
   ``train.json`` (``--max_patch_voxels`` overrides the patch budget, e.g. nnU-Net-sized patches; the memory
   budget then keeps the bundle's batch/patch ratio unless ``--memory_voxels`` is given). Reports the plan used.
2. **Preprocessing s/case and cache MB/case**: ``train#dataset`` (the CacheDataset of the source training split:
   load, RAS, resample to the plan spacing, crop to the body, pad, CT normalisation, label map, fg/bg indices) is
   built and its construction timed; / cases. The cache size is the sum of the bytes of every tensor / array held
   in ``ds._cache`` (image, label, fg/bg index arrays), per key and / case. **Linearity**: every volume-level step
   must be linear in voxels, so per case the time per input Mvoxel (on-disk voxels) and the cache MB per cached
   Mvoxel must stay flat across cases whose sizes differ several-fold; their min / max (and a least-squares fit
   ``s = a * Mvox + b``) are reported.
3. **Training steps/s** at the plan's patch and batch size: ``network_def``, ``loss`` and Adam (the config's
   ``learning_rate``) with batches drawn from ``train#dataloader`` (random pos/neg crops + the bundle's augmentation,
   ``num_workers`` 0, so data time is included and also reported apart), ``--train_steps`` steps after 2 warm-up
   steps. Only full batches are timed (the DataLoader's short last batch per pass is skipped); with fewer cached
   cases than the batch size every batch is short (``train_batch_is_plan_batch`` false).
4. **Sliding-window inference** on a 512 x 512 x ``--infer_slices`` (default 300) scan: a KiTS19-like phantom from
   the adult generator (a case whose real scan has at least that many slices, at its drawn real spacing, centrally
   cropped along z to exactly ``--infer_slices`` slices), run through ``inference.json#preprocessing`` (intensity
   alignment off), then ``inference.json#inferer`` (Gaussian sliding window, the plan's patch) is timed on the
   preprocessed tensor without mirroring (``mirror_axes=[]``) and with it (``--mirror_axes``, default ``0,1,2``:
   8 passes), with the number of windows per pass, with a randomly initialised ``network_def`` written as ``model.pt``. Then the whole ``inference.json`` is run once through
   ``python -m monai.bundle run`` in a subprocess (wall time, includes loading, preprocessing and writing the NIfTI
   predictions; skip with ``--no_bundle_run``).
5. **Peak RSS** of this process (``RUSAGE_SELF``; right after caching, and as a training process holds it: after
   the training steps, with ``validate#dataset``, the whole-volume validation cases, cached as well) and of the bundle
   subprocess (its own ``VmHWM``, polled; ``RUSAGE_CHILDREN`` is reported too but starts at this process's RSS at
   fork), in GB.

Torch threads are set deliberately (``--threads``, default env ``TLK_NUM_THREADS`` or 2). Run it alone: on a
2-core machine busy with other jobs, 2 torch threads made the forward pass ~15x slower than 1 thread. The full run
writes ~2-4 GB of data and takes long on a small CPU machine. Quick check of the script (minutes):
``env TLK_NUM_THREADS=1 python benchmarks/bench_scale.py --out /tmp/scale_smoke --n_cases 3 --train_steps 3
--infer_slices 10``.

Usage::

    env TLK_NUM_THREADS=2 python benchmarks/bench_scale.py --out /tmp/scale_bench

The last line printed is one JSON object: ``preprocess_s_per_case``, ``cache_mb_per_case``, ``train_steps_per_s``,
``sw_infer_s`` (no mirroring), ``sw_infer_mirror_s``, ``peak_rss_gb``, the settings (``n_cases``, ``patch_size``,
``batch_size``, ``target_spacing``, ``threads``) and the linearity figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from tlk_components.zoo.runner import bundle_command

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "kidney_ct_da_segmentation"
CONFIGS = BUNDLE / "configs"
DATA_MARKER = "bench_scale_data.json"


def _gb(kib: int) -> float:
    return round(kib / 1024**2, 3)  # ru_maxrss is in KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- data


def _poll_peak_rss(proc: subprocess.Popen, interval: float = 0.1) -> int:
    """Wait for ``proc``; return its own peak RSS in KiB (``VmHWM`` of ``/proc/<pid>/status``, polled).

    Not ``RUSAGE_CHILDREN``: a child's ``ru_maxrss`` starts at this (large) process's RSS at fork time.
    """
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(interval)
    return peak


def write_data(data: Path, n_cases: int, seed: int) -> float:
    """Write ``n_cases`` real-size cases per domain into ``data/amos22`` and ``data/kits19`` unless a complete copy is
    there (recorded by a marker file); returns the generation time (0 when reused)."""
    from tlk_components.data import kidney

    marker = data / DATA_MARKER
    want = {"n_cases": n_cases, "seed": seed, "size": "real"}
    if marker.is_file():
        have = json.loads(marker.read_text())
        if have != want:
            raise SystemExit(f"{data} holds other benchmark data ({have}, wanted {want}); pass another --data_dir")
        layout = kidney.resolve_layout(data)
        amos, kits = layout.source_datalist("all"), layout.target_datalist("all")
        files = [Path(p) for d in amos + kits for p in d.values()]
        if len(amos) == n_cases and len(kits) == n_cases and all(f.is_file() for f in files):
            print(f"data: reusing {n_cases} + {n_cases} real-size cases in {data}", flush=True)
            return 0.0
    elif (data / "kits19").is_dir() and any((data / "kits19").iterdir()):
        raise SystemExit(f"{data} holds data this benchmark did not write; pass an empty or new --data_dir")
    print(f"data: writing {n_cases} + {n_cases} real-size cases to {data} ...", flush=True)
    t0 = time.perf_counter()
    kidney.write_amos22(data / "amos22", n_cases, seed=seed, size="real")
    kidney.write_kits19(data / "kits19", n_cases, seed=seed, size="real")
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps(want))
    print(f"data: written in {seconds:.1f} s", flush=True)
    return seconds


def write_infer_volume(folder: Path, n_slices: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """A KiTS19-like 512 x 512 x ``n_slices`` scan at its drawn real spacing (reused when present)."""
    from tlk_components.data.adult_phantoms import (
        KITS_PROFILE,
        SCAN_RANGES_MM,
        case_grid,
        draw_case_geometry,
        generate_adult_phantom,
    )
    from tlk_components.data.nifti_checks import save_nifti

    path = folder / f"kits_512x512x{n_slices}.nii.gz"
    info_path = folder / f"kits_512x512x{n_slices}.json"
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    # the case (index >= 1000: none of the training cases) and scan range whose real scan is the shortest one with at
    # least n_slices slices; geometry draws are cheap (no voxels)
    best = None
    for idx in range(1000, 1400):
        for scan_range in SCAN_RANGES_MM:
            geo = draw_case_geometry(KITS_PROFILE, seed, idx, scan_range=scan_range)
            nz = case_grid(geo, "real").shape[2]
            if nz >= n_slices and (best is None or nz < best[0]):
                best = (nz, idx, scan_range)
        if best is not None and best[0] - n_slices < 10:
            break
    if best is None:
        raise SystemExit(f"no KiTS19-like phantom with >= {n_slices} slices found; lower --infer_slices")
    nz, idx, scan_range = best
    t0 = time.perf_counter()
    ph = generate_adult_phantom(KITS_PROFILE, seed, idx, size="real", scan_range=scan_range)
    img = ph.image_nifti(np.int16)
    z_axis = [c.upper() in "SI" for c in ph.axcodes].index(True)
    start = (nz - n_slices) // 2
    index = [slice(None)] * 3
    index[z_axis] = slice(start, start + n_slices)
    img = img.slicer[tuple(index)]
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(img, path)
    info = {
        "source": f"adult phantom KITS_PROFILE seed={seed} case_index={idx} scan_range={scan_range}, "
        f"{nz} slices, centrally cropped along z to {n_slices}",
        "shape_on_disk": [int(s) for s in img.shape],
        "axcodes": ph.axcodes,
        "spacing_xyz_mm": [round(float(s), 4) for s in ph.geometry.spacing],
        "generate_s": round(time.perf_counter() - t0, 2),
    }
    info_path.write_text(json.dumps(info, indent=2))
    return path, info


# ---------------------------------------------------------------------------------------------------- plan


def make_plans(data: Path, plans_file: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """plans.json with the bundle's budgets (or ``--max_patch_voxels``); reused when its rules and case count match."""
    from tlk_components.data.plan import load_plans, plan

    cfg = json.loads((CONFIGS / "train.json").read_text())
    bundle_patch, bundle_memory = int(cfg["plan_max_patch_voxels"]), int(cfg["plan_memory_voxels"])
    max_patch = int(args.max_patch_voxels or bundle_patch)
    if args.memory_voxels:
        memory = int(args.memory_voxels)
    else:  # keep the bundle's memory / patch ratio when the patch budget is overridden
        memory = max(bundle_memory, round(bundle_memory / bundle_patch * max_patch))
    settings = {
        "max_patch_voxels": max_patch,
        "memory_voxels": memory,
        "source": "train.json" if not args.max_patch_voxels else "--max_patch_voxels",
        "bundle_max_patch_voxels": bundle_patch,
        "bundle_memory_voxels": bundle_memory,
    }
    if plans_file.is_file():
        plans = load_plans(plans_file)
        rules, n_src = plans.get("rules", {}), plans.get("fingerprint", {}).get("source", {}).get("n_cases")
        if (
            rules.get("max_patch_voxels") == max_patch
            and rules.get("memory_voxels") == memory
            and n_src == args.n_cases
        ):
            settings["plan_s"] = 0.0
            return plans, settings
    t0 = time.perf_counter()
    plan(
        str(data),
        out=str(plans_file),
        max_patch_voxels=max_patch,
        memory_voxels=memory,
    )
    settings["plan_s"] = round(time.perf_counter() - t0, 2)
    return load_plans(plans_file), settings


# ---------------------------------------------------------------------------------------------------- preprocessing


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def _ratio_stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
        "mean": round(float(v.mean()), 4),
        "max_over_min": round(float(v.max() / v.min()), 3) if v.min() > 0 else float("nan"),
    }


def _fit(x: list[float], y: list[float]) -> dict[str, float] | None:
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    a, b = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return {"slope": round(float(a), 4), "intercept": round(float(b), 4)}


def train_parser(out: Path, data: Path, plans_file: Path, threads: int):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "pretrain.json")])
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(data),
            "demo_dir": str(data),
            "ckpt_dir": str(out / "models"),
            "plans_file": str(plans_file),
            "output_dir": str(out / "eval"),
            "num_workers": 0,
            "num_threads": threads,
        }
    )
    parser.get_parsed_content("imports")
    return parser


def preprocessing(parser) -> tuple[Any, dict[str, Any]]:
    """Build ``train#dataset`` (every case cached at construction); time it per case and size the cache."""
    from monai.data import CacheDataset

    parser.get_parsed_content("train#preprocessing")  # the transforms themselves, not timed
    items = parser.get_parsed_content("source_train_list")
    per_case_s: list[float] = []
    original = CacheDataset._load_cache_item

    def timed(self: CacheDataset, idx: int) -> Any:
        t = time.perf_counter()
        result = original(self, idx)
        per_case_s.append(time.perf_counter() - t)
        return result

    CacheDataset._load_cache_item = timed  # num_workers 0 -> one thread: the cases are cached one after another
    try:
        t0 = time.perf_counter()
        ds = parser.get_parsed_content("train#dataset")
        total_s = time.perf_counter() - t0
    finally:
        CacheDataset._load_cache_item = original
    cache = ds._cache
    n = len(cache)
    cases = []
    key_bytes: dict[str, int] = {}
    for i, entry in enumerate(cache):
        hdr = nib.load(items[i]["image"]).header
        in_vox = int(np.prod(hdr.get_data_shape()[:3]))
        image = entry["image"]
        cached_vox = int(np.prod(image.shape[1:]))
        nbytes = _nbytes(entry)
        for k, v in entry.items():
            key_bytes[k] = key_bytes.get(k, 0) + _nbytes(v)
        cases.append(
            {
                "case": Path(items[i]["image"]).name,
                "input_shape": [int(s) for s in hdr.get_data_shape()[:3]],
                "input_spacing": [round(float(s), 3) for s in hdr.get_zooms()[:3]],
                "cached_shape": [int(s) for s in image.shape[1:]],
                "input_mvox": round(in_vox / 1e6, 3),
                "cached_mvox": round(cached_vox / 1e6, 3),
                "seconds": round(per_case_s[i], 3) if i < len(per_case_s) else None,
                "cache_mb": round(nbytes / 1e6, 2),
            }
        )
    secs = [c["seconds"] for c in cases]
    s_per_in = [c["seconds"] / c["input_mvox"] for c in cases]
    s_per_cached = [c["seconds"] / c["cached_mvox"] for c in cases]
    mb_per_cached = [c["cache_mb"] / c["cached_mvox"] for c in cases]
    result = {
        "n_cached_cases": n,
        "preprocess_total_s": round(total_s, 2),
        "preprocess_s_per_case": round(total_s / n, 3),
        "cache_mb_total": round(sum(c["cache_mb"] for c in cases), 1),
        "cache_mb_per_case": round(sum(c["cache_mb"] for c in cases) / n, 2),
        "cache_mb_per_case_by_key": {k: round(b / 1e6 / n, 2) for k, b in key_bytes.items()},
        "cached_mvox_per_case": round(float(np.mean([c["cached_mvox"] for c in cases])), 3),
        "linearity": {
            "s_per_input_mvox": _ratio_stats(s_per_in),
            "s_per_cached_mvox": _ratio_stats(s_per_cached),
            "cache_mb_per_cached_mvox": _ratio_stats(mb_per_cached),
            "fit_s_vs_input_mvox": _fit([c["input_mvox"] for c in cases], secs),
            "fit_cache_mb_vs_cached_mvox": _fit([c["cached_mvox"] for c in cases], [c["cache_mb"] for c in cases]),
            "input_mvox_range": [min(c["input_mvox"] for c in cases), max(c["input_mvox"] for c in cases)],
            "cached_mvox_range": [min(c["cached_mvox"] for c in cases), max(c["cached_mvox"] for c in cases)],
        },
        "cases": cases,
    }
    return ds, result


def validation_cache(parser) -> dict[str, Any]:
    """Build ``validate#dataset`` (the whole-volume source validation cases, cached next to the training patches'
    sources in a real training process) and size it."""
    t0 = time.perf_counter()
    ds = parser.get_parsed_content("validate#dataset")
    secs = time.perf_counter() - t0
    n = len(ds._cache)
    total = sum(_nbytes(entry) for entry in ds._cache)
    return {"n_val_cases": n, "val_cache_s": round(secs, 2), "val_cache_mb_total": round(total / 1e6, 1)}


# ---------------------------------------------------------------------------------------------------- training


def training(parser, n_steps: int, warmup: int = 2) -> dict[str, Any]:
    """``network_def`` + ``loss`` + Adam on batches of ``train#dataloader``; steps/s after ``warmup`` steps."""
    device = parser.get_parsed_content("device")
    amp = bool(parser.get_parsed_content("amp")) and device.type == "cuda"
    net = parser.get_parsed_content("network_def", instantiate=True).to(device).train()
    loss_fn = parser.get_parsed_content("loss", instantiate=True)
    lr = float(parser.get_parsed_content("learning_rate"))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loader = parser.get_parsed_content("train#dataloader")

    def batches():
        while True:
            yield from loader

    it = batches()
    # only full batches are timed: DataLoader keeps the short last batch of each pass over the cases (drop_last is
    # False), which would flatter the figure; with fewer cases than the batch size every batch is short
    full = min(int(loader.batch_size), len(loader.dataset))
    data_s, step_s, losses = 0.0, 0.0, []
    shape, step, short_skipped = None, 0, 0
    while step < warmup + n_steps:
        t0 = time.perf_counter()
        batch = next(it)
        x, y = batch["image"].to(device), batch["label"].to(device)
        if x.shape[0] < full:
            short_skipped += 1
            continue
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        t2 = time.perf_counter()
        shape = list(x.shape)
        if step >= warmup:
            data_s += t1 - t0
            step_s += t2 - t0
            losses.append(float(loss.detach()))
        step += 1
    return {
        "train_steps": n_steps,
        "train_steps_per_s": round(n_steps / step_s, 4),
        "train_s_per_step": round(step_s / n_steps, 3),
        "train_data_s_per_step": round(data_s / n_steps, 3),
        "train_batch_shape": shape,
        "train_batch_is_plan_batch": shape[0] == int(loader.batch_size),
        "train_short_batches_skipped": short_skipped,
        "train_device": str(device),
        "train_amp": amp,
        "train_lr": lr,
        "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


# ---------------------------------------------------------------------------------------------------- inference


def inference(out: Path, data: Path, plans_file: Path, volume: Path, args: argparse.Namespace) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    from tlk_components.utils import atomic_torch_save

    models = out / "models"
    overrides = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data),
        "demo_dir": str(data),
        "ckpt_dir": str(models),
        "plans_file": str(plans_file),
        "model_path": str(models / "model.pt"),
        "input_dir": str(volume.parent),
        "output_dir": str(out / "predictions"),
        "align_intensity": False,
        "num_threads": args.threads,
        "mirror_axes": [],
    }
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(overrides)
    parser.get_parsed_content("imports")
    torch.manual_seed(args.seed)
    atomic_torch_save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), models / "model.pt")

    device = parser.get_parsed_content("device")
    amp = bool(parser.get_parsed_content("amp")) and device.type == "cuda"
    network = parser.get_parsed_content("network").eval()  # loads model.pt (strict) as the bundle does
    transform = parser.get_parsed_content("preprocessing")
    t0 = time.perf_counter()
    image = transform({"image": str(volume)})["image"]
    pre_s = time.perf_counter() - t0
    x = image.as_tensor()[None].to(device) if hasattr(image, "as_tensor") else image[None].to(device)
    result: dict[str, Any] = {
        "infer_preprocess_s": round(pre_s, 2),
        "infer_preprocessed_shape": [int(s) for s in x.shape[2:]],
        "infer_device": str(device),
    }
    roi = [int(r) for r in parser.get_parsed_content("patch_size")]
    overlap = float(parser["inferer"]["overlap"])
    windows = 1
    for size, r in zip(result["infer_preprocessed_shape"], roi, strict=True):
        step = max(1, int(r * (1 - overlap)))
        windows *= max(1, math.ceil((size - r) / step) + 1) if size > r else 1
    result["sw_windows_per_pass"] = windows
    print(f"sliding window: {result['infer_preprocessed_shape']} voxels, roi {roi}, {windows} windows/pass", flush=True)
    for key, axes in (("sw_infer_s", []), ("sw_infer_mirror_s", list(args.mirror_axes))):
        parser["mirror_axes"] = axes
        inferer = parser.get_parsed_content("inferer", instantiate=True)
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            _sync(device)
            t = time.perf_counter()
            logits = inferer(x, network)
            _sync(device)
            result[key] = round(time.perf_counter() - t, 2)
        result[f"{key}_passes"] = len(inferer.flips())
        del logits
        print(f"sliding window (mirror_axes={axes}): {result[key]:.1f} s", flush=True)
    result["sw_roi_size"] = roi
    result["sw_overlap"] = overlap
    result["sw_batch_size"] = parser["inferer"]["sw_batch_size"]

    if args.no_bundle_run:
        return result
    overrides["mirror_axes"] = []
    cmd = bundle_command([CONFIGS / "inference.json"], overrides)
    log = out / "inference_bundle.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=str(out), stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ))
        peak_kib = _poll_peak_rss(proc)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"inference.json run failed ({proc.returncode}), log {log}:\n{log.read_text()[-4000:]}")
    result["bundle_inference_wall_s"] = round(wall, 2)
    result["bundle_inference_peak_rss_gb"] = _gb(peak_kib)
    return result


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/scale_bench", help="work folder (data, plans, model, predictions, logs)")
    ap.add_argument("--data_dir", default=None, help="real-size data folder (default <out>/data); reused if complete")
    ap.add_argument("--n_cases", type=int, default=20, help="real-size cases per domain")
    ap.add_argument("--seed", type=int, default=0, help="data seed (and the random network's seed)")
    ap.add_argument("--max_patch_voxels", type=int, default=None, help="override train.json's plan_max_patch_voxels")
    ap.add_argument("--memory_voxels", type=int, default=None, help="override the plan's batch memory budget")
    ap.add_argument("--train_steps", type=int, default=20, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--infer_slices", type=int, default=300, help="slices of the 512 x 512 inference volume")
    ap.add_argument(
        "--mirror_axes",
        type=lambda v: [int(a) for a in v.split(",") if a.strip()],
        default=[0, 1, 2],
        help="mirror axes of the mirrored sliding-window run (default 0,1,2: 8 passes; fewer for a quick check)",
    )
    ap.add_argument("--no_bundle_run", action="store_true", help="skip the inference.json subprocess run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default env TLK_NUM_THREADS or 2)")
    args = ap.parse_args(argv)
    if args.n_cases < 2:
        ap.error("--n_cases must be >= 2 (the source split holds out a test case)")
    args.threads = int(args.threads or os.environ.get("TLK_NUM_THREADS") or 2)

    from tlk_components.utils import configure_threads

    threads = configure_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data_dir) if args.data_dir else out / "data"
    plans_file = out / "models" / "plans.json"
    plans_file.parent.mkdir(parents=True, exist_ok=True)

    generate_s = write_data(data, args.n_cases, args.seed)
    plans, plan_settings = make_plans(data, plans_file, args)
    print(
        f"plan: target_spacing {plans['target_spacing']} patch {plans['patch_size']} batch {plans['batch_size']} "
        f"(max_patch_voxels {plan_settings['max_patch_voxels']} from {plan_settings['source']}, "
        f"memory_voxels {plan_settings['memory_voxels']})",
        flush=True,
    )

    parser = train_parser(out, data, plans_file, threads)
    ds, pre = preprocessing(parser)
    print(
        f"preprocessing: {pre['n_cached_cases']} cases cached in {pre['preprocess_total_s']:.1f} s "
        f"({pre['preprocess_s_per_case']:.2f} s/case), cache {pre['cache_mb_per_case']:.1f} MB/case "
        f"{pre['cache_mb_per_case_by_key']}",
        flush=True,
    )
    print("| case | input shape | spacing | cached shape | s | s/input Mvox | cache MB | MB/cached Mvox |")
    print("|---|---|---|---|---|---|---|---|")
    for c in pre["cases"]:
        print(
            f"| {c['case']} | {c['input_shape']} | {c['input_spacing']} | {c['cached_shape']} | {c['seconds']:.2f} | "
            f"{c['seconds'] / c['input_mvox']:.3f} | {c['cache_mb']:.1f} | {c['cache_mb'] / c['cached_mvox']:.2f} |"
        )
    rss_after_cache = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    train = training(parser, args.train_steps)
    print(
        f"training: {train['train_steps_per_s']:.3f} steps/s ({train['train_s_per_step']:.2f} s/step, data "
        f"{train['train_data_s_per_step']:.2f} s/step), batch {train['train_batch_shape']}",
        flush=True,
    )
    val = validation_cache(parser)
    rss_training_process = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(
        f"validation cache: {val['n_val_cases']} whole source volumes, {val['val_cache_mb_total']:.0f} MB in "
        f"{val['val_cache_s']:.1f} s; peak RSS with both caches after training {rss_training_process:.2f} GB",
        flush=True,
    )
    del ds, parser

    volume, vol_info = write_infer_volume(out / "infer_input", args.infer_slices, args.seed)
    infer = inference(out, data, plans_file, volume, args)

    peak_self = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    peak_children = _gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result = {
        "preprocess_s_per_case": pre["preprocess_s_per_case"],
        "cache_mb_per_case": pre["cache_mb_per_case"],
        "train_steps_per_s": train["train_steps_per_s"],
        "train_s_per_step": train["train_s_per_step"],
        "sw_infer_s": infer["sw_infer_s"],
        "sw_infer_mirror_s": infer["sw_infer_mirror_s"],
        "bundle_inference_wall_s": infer.get("bundle_inference_wall_s"),
        "peak_rss_gb": peak_self,
        "peak_rss_after_cache_gb": rss_after_cache,
        "peak_rss_training_process_gb": rss_training_process,
        "peak_rss_children_gb": peak_children,
        "n_cases": args.n_cases,
        "n_cached_cases": pre["n_cached_cases"],
        "patch_size": plans["patch_size"],
        "batch_size": plans["batch_size"],
        "target_spacing": plans["target_spacing"],
        "plan": plan_settings,
        "threads": threads,
        "infer_volume": {"slices": args.infer_slices, **vol_info},
        "cache_mb_per_case_by_key": pre["cache_mb_per_case_by_key"],
        "cached_mvox_per_case": pre["cached_mvox_per_case"],
        "linearity": pre["linearity"],
        **val,
        "data_generate_s": round(generate_s, 1),
        **{k: v for k, v in train.items() if k not in ("train_steps_per_s", "train_s_per_step")},
        **{k: v for k, v in infer.items() if k not in ("sw_infer_s", "sw_infer_mirror_s", "bundle_inference_wall_s")},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
