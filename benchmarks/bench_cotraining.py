# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Co-training versus its baselines on the two-view digits demo, side by side in one run.

For each seed (a different split and network initialisation) three runs of the same engine
(:class:`tlk_components.engines.trainers.cotraining.CoTrainer`) with the bundle's hyperparameters:

* ``labelled_only``: both view models trained on the labelled 25 % only (the baseline);
* ``cotraining``: the same plus pseudo-label exchange over the unlabelled 75 %;
* ``all_labels``: fully supervised, the unlabelled pool with its true labels added (the ceiling).

The benchmark hides labels itself (``--hide_fraction``, default 0.75, the source notebook's setting): it writes the
digits with every label (``write_demo(..., hidden_fraction=0)``) and, per seed, hides that share of the labelled
rows in the unlabelled pool (``load_splits(unlabelled_fraction=...)``, seeded with ``split_seed``). The bundle
itself never hides a user's labels: its pool is the rows with an empty label.

Each is scored on the test split by the bundle's own ``validate#evaluator``
(:class:`~tlk_components.engines.evaluators.cotraining.CoTrainingEvaluator` on ``models/model.pt``: the best checkpoint per
model, ensemble = mean of the two softmax outputs). Reported: test accuracy of the ensemble and of
each view, the gain of co-training over the baseline in accuracy points, the fraction of the baseline-to-supervised
gap it closes, and the accuracy of the pseudo-labels co-training added (against the hidden true labels).
Targets: gain >= 3 points and gap closed >= 0.5.

Usage::

    TLK_NUM_THREADS=2 python benchmarks/bench_cotraining.py --seeds 0,1,2 --out /tmp/bench_cot

The last line printed is one JSON object: ``acc_baseline``, ``acc_cotraining``, ``acc_supervised``,
``gain_points``, ``gap_closed``, ``pseudo_label_acc`` (means over seeds) plus per-seed values and standard
deviations.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from tlk_components.data.cotraining import load_splits, write_demo
from tlk_components.engines.evaluators.cotraining import CoTrainingEvaluator
from tlk_components.engines.trainers.cotraining import CoTrainer
from tlk_components.utils import configure_threads

__all__ = ["main", "run_mode"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cotraining_classification"
MODES = ("labelled_only", "cotraining", "all_labels")


def _config(
    dataset_dir: Path, out: Path, mode: str, seed: int, overrides: dict[str, Any], hide_fraction: float = 0.75
) -> ConfigParser:
    """The bundle's own train.json, with paths, mode and seed overridden (so the benchmark measures the bundle), and
    ``hide_fraction`` of the labelled rows hidden in the unlabelled pool."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(dataset_dir),
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "eval"),
            "mode": mode,
            "seed": seed,
            "split_seed": 13 + seed,
            "splits": "$tlk_components.data.cotraining.load_splits(@dataset_dir, "
            f"unlabelled_fraction={float(hide_fraction)}, test_fraction=@test_fraction, val_fraction=@val_fraction, "
            "seed=@split_seed)",
            "resume": False,
            "device": "$torch.device('cpu')",
            "train#trainer#progress": False,
            "validate#evaluator#split": "test",
            "validate#evaluator#filename": "metrics.json",
            **overrides,
        }
    )
    return parser


def run_mode(
    dataset_dir: Path, out: Path, mode: str, seed: int, overrides: dict[str, Any], hide_fraction: float = 0.75
) -> dict[str, Any]:
    """Train in ``mode`` and evaluate on the test split; returns test accuracies, pseudo-label stats and time."""
    shutil.rmtree(out, ignore_errors=True)
    parser = _config(dataset_dir, out, mode, seed, overrides, hide_fraction)
    set_determinism(seed=seed)
    trainer: CoTrainer = parser.get_parsed_content("train#trainer")
    t0 = time.perf_counter()
    history = trainer.run()
    seconds = time.perf_counter() - t0
    evaluator: CoTrainingEvaluator = parser.get_parsed_content("validate#evaluator")
    m = evaluator.run()
    added = sum(h["added_view0"] + h["added_view1"] for h in history)
    correct = sum((h["pseudo_label_accuracy"] or 0.0) * (h["added_view0"] + h["added_view1"]) for h in history)
    return {
        "acc": m["test_accuracy_ensemble"],
        "acc_view0": m["test_accuracy_view0"],
        "acc_view1": m["test_accuracy_view1"],
        "pseudo_labels": added,
        "pseudo_label_acc": correct / added if added else None,
        "iterations": len(history),
        "seconds": round(seconds, 1),
    }


def _ms(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split and initialisation)")
    ap.add_argument("--out", default="/tmp/bench_cotraining", help="scratch folder")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--override", default="{}", help="JSON of config overrides, e.g. '{\"k\": 40}'")
    ap.add_argument(
        "--hide_fraction", type=float, default=0.75, help="share of the labelled digits hidden in the unlabelled pool"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ignite.handlers.early_stopping.EarlyStopping").setLevel(logging.WARNING)
    configure_threads()
    out = Path(args.out)
    data = out / "data_all_labels"
    if not (data / "samples.csv").is_file():
        write_demo(data, hidden_fraction=0.0)
    overrides = json.loads(args.override)
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for seed in seeds:
        for mode in modes:
            r = run_mode(data, out / f"{mode}_{seed}", mode, seed, overrides, args.hide_fraction)
            rows[mode].append(r)
            pl = (
                ""
                if r["pseudo_label_acc"] is None
                else f", {r['pseudo_labels']} pseudo-labels at {r['pseudo_label_acc']:.3f}"
            )
            print(
                f"seed {seed} {mode:14s} test acc ensemble {r['acc']:.4f} (view0 {r['acc_view0']:.4f}, view1 "
                f"{r['acc_view1']:.4f}), {r['iterations']} iterations, {r['seconds']} s{pl}",
                flush=True,
            )
    n_test = len(load_splits(data, unlabelled_fraction=args.hide_fraction, seed=13).test)
    summary: dict[str, Any] = {
        "seeds": seeds,
        "n_test_per_seed": n_test,
        "hide_fraction": args.hide_fraction,
        "overrides": overrides,
    }
    if {"labelled_only", "cotraining", "all_labels"} <= set(modes):
        base = [r["acc"] for r in rows["labelled_only"]]
        cot = [r["acc"] for r in rows["cotraining"]]
        sup = [r["acc"] for r in rows["all_labels"]]
        gains = [100 * (c - b) for c, b in zip(cot, base, strict=True)]
        gap_mean = float(np.mean(sup) - np.mean(base))
        gap_closed = float((np.mean(cot) - np.mean(base)) / gap_mean) if gap_mean > 0 else float("nan")
        pla = [r["pseudo_label_acc"] for r in rows["cotraining"] if r["pseudo_label_acc"] is not None]
        for name, vals in (("baseline", base), ("cotraining", cot), ("supervised", sup), ("gain_points", gains)):
            m, s = _ms(vals)
            print(f"{name:12s} {m:.4f} +- {s:.4f}  per seed {[round(v, 4) for v in vals]}")
        print(f"co-training / baseline accuracy ratio {np.mean(cot) / np.mean(base):.4f}; gap closed {gap_closed:.3f}")
        summary.update(
            {
                "acc_baseline": round(float(np.mean(base)), 4),
                "acc_baseline_sd": round(_ms(base)[1], 4),
                "acc_cotraining": round(float(np.mean(cot)), 4),
                "acc_cotraining_sd": round(_ms(cot)[1], 4),
                "acc_supervised": round(float(np.mean(sup)), 4),
                "acc_supervised_sd": round(_ms(sup)[1], 4),
                "gain_points": round(float(np.mean(gains)), 2),
                "gain_points_sd": round(_ms(gains)[1], 2),
                "gap_closed": round(gap_closed, 3),
                "pseudo_label_acc": round(float(np.mean(pla)), 4) if pla else None,
                "acc_view0": {m: round(float(np.mean([r["acc_view0"] for r in rows[m]])), 4) for m in modes},
                "acc_view1": {m: round(float(np.mean([r["acc_view1"] for r in rows[m]])), 4) for m in modes},
                "seconds": {m: round(float(np.sum([r["seconds"] for r in rows[m]])), 1) for m in modes},
            }
        )
    else:
        summary["runs"] = rows
    torch.set_num_threads(torch.get_num_threads())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
