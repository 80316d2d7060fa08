# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of ``kidney_ct_da_segmentation``: label-free adaptation vs. the target-supervised oracle.

In one run on the demo data (AMOS22-style source → KiTS19-style target phantoms), every stage through the bundle's
real configs (``python -m monai.bundle run``):

1. source pretraining (``pretrain.json``) → the **source-only** model;
2. the **oracle**: the same network, optimiser and learning rate trained from scratch on target labels
   (``oracle.json``), validated on the target test cases after every epoch; its time is the training time until
   it FIRST reaches its best Dice (validation time excluded);
3. **adapted**: the default label-free adapter (``train.json``: target intensity alignment, then entropy
   minimisation + the class-size prior of the source labels on target batches only), a fixed budget of
   ``--adapt_epochs x --adapt_epoch_length`` steps (30) — a stopping rule that reads no label;
4. **DANN** (``train.json`` + ``train_dann.json``): source supervision + encoder adversary, same fixed budget;
5. ``evaluate.json``: target kidney Dice of all four side by side on the held-out target cases.

Prints a table, ratios and peak RSS of the child processes; the LAST line is one JSON object with
``dice_source_only, dice_adapted, dice_dann, dice_oracle, dice_ratio, speedup, speedup_incl_pretrain,
peak_rss_gb`` (plus times). Run it alone on the machine; it takes minutes.

With ``--variants '{"name": {overrides of train.json}, ...}'`` it instead adapts each variant from the
pretrained model already in ``--out/models`` and prints one table of all of them beside source-only and the oracle
(the README's variant table).

Usage::

    python benchmarks/bench_kidney_da.py --out /tmp/kidney_da_bench
    python benchmarks/bench_kidney_da.py --out /tmp/kidney_da_bench --variants '{"lr_1e-3": {"learning_rate": 0.001}}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from tlk_components.zoo.runner import bundle_command

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "kidney_ct_da_segmentation" / "configs"


def _run(configs: list[str], log: Path, **overrides: Any) -> float:
    """Run ``monai.bundle run`` with ``configs`` and ``--key value`` overrides; returns the wall time."""
    cmd = bundle_command([CONFIGS / c for c in configs], overrides)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, cwd=str(log.parent), stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"stage failed ({' '.join(configs)}), log {log}:\n{tail}")
    return wall


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _adapt(out: Path, configs: list[str], log_name: str, tag: str, common: dict[str, Any], **overrides: Any) -> float:
    """Adapt ``out/models/pretrained.pt`` with ``configs`` into ``models_<tag>/`` and ``eval_<tag>/`` (fresh run, no
    validation); returns the adaptation's training time in seconds."""
    models = out / "models"
    _run(
        configs,
        out / log_name,
        **common,
        ckpt_dir=out / f"models_{tag}",
        output_dir=out / f"eval_{tag}",
        pretrained_path=models / "pretrained.pt",
        plans_file=models / "plans.json",
        val_interval=10**6,
        resume=False,
        **overrides,
    )
    return _json(out / f"eval_{tag}" / "adapt_time.json")["train_time_s"]


def _variants(
    out: Path, common: dict[str, Any], variants: dict[str, dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Adapt every variant from ``out/models/pretrained.pt`` and evaluate all of them side by side."""
    models = out / "models"
    ckpts = {"source_only": str(models / "pretrained.pt"), "oracle": str(models / "oracle.pt")}
    times: dict[str, float] = {}
    for name, overrides in variants.items():
        run_args = {"epochs": args.adapt_epochs, "epoch_length": args.adapt_epoch_length, **overrides}
        times[name] = _adapt(out, ["train.json"], f"variant_{name}.log", f"v_{name}", common, **run_args)
        ckpts[name] = str(out / f"models_v_{name}" / "model.pt")
    _run(
        ["train.json", "evaluate.json"],
        out / "evaluate_variants.log",
        **common,
        ckpt_dir=models,
        output_dir=out / "eval_variants",
        checkpoints=ckpts,
        aligned_models=list(variants),
    )
    metrics = _json(out / "eval_variants" / "metrics.json")
    dice = {k: metrics[f"target_mean_dice_kidney_{k}"] for k in ckpts}
    print("\n| variant | overrides of train.json | target kidney Dice | / oracle | adaptation time (s) |")
    print("|---|---|---|---|---|")
    for name in ckpts:
        over = json.dumps(variants.get(name, {})) if name in variants else "-"
        t = f"{times[name]:.1f}" if name in times else "-"
        print(f"| {name} | `{over}` | {dice[name]:.4f} | {dice[name] / dice['oracle']:.3f} | {t} |")
    result = {"variants": dice, "adapt_time_s": times}
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/kidney_da_bench", help="work folder (demo data, models, logs)")
    ap.add_argument("--pretrain_epochs", type=int, default=60)
    ap.add_argument("--oracle_epochs", type=int, default=60)
    ap.add_argument("--adapt_epochs", type=int, default=3)
    ap.add_argument("--adapt_epoch_length", type=int, default=10)
    ap.add_argument("--dann_epochs", type=int, default=3)
    ap.add_argument("--dann_epoch_length", type=int, default=10)
    ap.add_argument(
        "--stages",
        default="pretrain,oracle,adapt,dann,evaluate",
        help="comma-separated subset (reuses earlier outputs in --out)",
    )
    ap.add_argument("--seed", type=int, default=0, help="training seed of every stage (the demo data stay the same)")
    ap.add_argument("--adapt_override", default="{}", help="JSON dict of extra overrides for the adapted run")
    ap.add_argument(
        "--variants",
        default="",
        help="JSON dict {name: overrides of train.json}: adapt each variant from the same pretrained "
        "model (fixed budget), evaluate them beside source-only and the oracle on the target test "
        "cases, print the variant table and stop (needs the pretrain and oracle stages in --out)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    data = out / "demo"
    models = out / "models"
    common = {"dataset_dir": data, "demo_dir": data, "seed": args.seed}
    pretrained = models / "pretrained.pt"
    times_file = out / "times.json"
    times: dict[str, float] = _json(times_file) if times_file.is_file() else {}

    if not (data / "kits19").is_dir():
        from tlk_components.data.kidney import write_demo

        write_demo(data, size="demo", seed=0)
    if args.variants:
        return _variants(out, common, json.loads(args.variants), args)
    if "pretrain" in stages:
        _run(
            ["train.json", "pretrain.json"],
            out / "pretrain.log",
            **common,
            ckpt_dir=models,
            output_dir=out / "eval_pretrain",
            epochs=args.pretrain_epochs,
            resume=False,
        )
        times["pretrain_s"] = _json(out / "eval_pretrain" / "pretrain_time.json")["train_time_s"]
    if "oracle" in stages:
        _run(
            ["train.json", "pretrain.json", "oracle.json"],
            out / "oracle.log",
            **common,
            ckpt_dir=models,
            output_dir=out / "eval_oracle",
            epochs=args.oracle_epochs,
            resume=False,
        )
        hist = _json(out / "eval_oracle" / "oracle_history.json")
        times["oracle_to_best_s"] = hist["time_to_best_s"]
        times["oracle_best_epoch"] = hist["epoch_of_best"]
        times["oracle_total_s"] = _json(out / "eval_oracle" / "oracle_time.json")["train_time_s"]
    if "adapt" in stages:
        times["adapt_s"] = _adapt(
            out,
            ["train.json"],
            "adapt.log",
            "adapted",
            common,
            epochs=args.adapt_epochs,
            epoch_length=args.adapt_epoch_length,
            **json.loads(args.adapt_override),
        )
    if "dann" in stages:
        times["dann_s"] = _adapt(
            out,
            ["train.json", "train_dann.json"],
            "dann.log",
            "dann",
            common,
            epochs=args.dann_epochs,
            epoch_length=args.dann_epoch_length,
        )
    times_file.write_text(json.dumps(times, indent=2))
    if "evaluate" in stages:
        ckpts = {
            "source_only": str(pretrained),
            "source_only_aligned": str(pretrained),
            "adapted": str(out / "models_adapted" / "model.pt"),
            "dann": str(out / "models_dann" / "model.pt"),
            "oracle": str(models / "oracle.pt"),
        }
        _run(
            ["train.json", "evaluate.json"],
            out / "evaluate.log",
            **common,
            ckpt_dir=models,
            output_dir=out / "eval",
            checkpoints=ckpts,
        )
    if not (out / "eval" / "metrics.json").is_file():
        print(f"no {out / 'eval' / 'metrics.json'} yet; run the evaluate stage. Times so far: {times}")
        return {}
    metrics = _json(out / "eval" / "metrics.json")
    d = {
        k: metrics.get(f"target_mean_dice_kidney_{k}")
        for k in ("source_only", "source_only_aligned", "adapted", "dann", "oracle")
    }
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    adapt_s, oracle_s, pre_s = times.get("adapt_s"), times.get("oracle_to_best_s"), times.get("pretrain_s")
    ratio = d["adapted"] / d["oracle"] if d["adapted"] is not None and d["oracle"] else None
    speedup = oracle_s / adapt_s if oracle_s and adapt_s else None
    speedup_pre = oracle_s / (adapt_s + pre_s) if oracle_s and adapt_s and pre_s else None
    print("\n| method | target kidney Dice | / oracle | training time (s) |")
    print("|---|---|---|---|")
    for name, t in (
        ("source_only", pre_s),
        ("source_only_aligned", 0.0),
        ("adapted", adapt_s),
        ("dann", times.get("dann_s")),
        ("oracle", oracle_s),
    ):
        if d[name] is not None:
            rel = d[name] / d["oracle"] if d["oracle"] else float("nan")
            print(f"| {name} | {d[name]:.4f} | {rel:.3f} | {t if t is not None else float('nan'):.1f} |")
    print(
        f"oracle: best Dice at epoch {times.get('oracle_best_epoch')} after {oracle_s} s of training "
        f"(validation excluded); total {times.get('oracle_total_s')} s"
    )
    print(
        f"dice_ratio (adapted/oracle) = {ratio}; speedup (oracle time-to-best / adaptation) = {speedup}; "
        f"incl. pretraining = {speedup_pre}; source-only gap = "
        f"{(d['oracle'] - d['source_only']) * 100 if d['oracle'] and d['source_only'] is not None else None} points"
    )
    result = {
        "dice_source_only": d["source_only"],
        "dice_adapted": d["adapted"],
        "dice_dann": d["dann"],
        "dice_source_only_aligned": d["source_only_aligned"],
        "dice_oracle": d["oracle"],
        "dice_ratio": ratio,
        "speedup": speedup,
        "speedup_incl_pretrain": speedup_pre,
        "peak_rss_gb": round(peak_rss_gb, 3),
        "adapt_time_s": adapt_s,
        "dann_time_s": times.get("dann_s"),
        "oracle_time_to_best_s": oracle_s,
        "pretrain_time_s": pre_s,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
