# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The zoo's main job: AMOS→KiTS kidney domain adaptation end to end on the demo phantoms.

``python -m tlk_components kidney_demo OUT_DIR`` (or :func:`run_demo`) writes the demo data, then runs the
bundle's real configs through ``python -m monai.bundle run``, one stage after the other:

1. ``train.json + pretrain.json`` — supervised on the labelled source (AMOS22-style phantoms);
2. ``train.json`` — label-free adaptation to the target (KiTS19-style phantoms; no target label is read);
3. ``train.json + evaluate.json`` — target kidney Dice of the source-only and adapted models side by side.

It ends by printing the source-only / adapted Dice table (also in ``OUT_DIR/eval/dice_table.md``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tlk_components.utils.errors import TLKError
from tlk_components.utils.validation import check_positive_int
from tlk_components.zoo.runner import bundle_command

__all__ = ["run_demo"]

_CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "kidney_ct_da_segmentation" / "configs"


def _stage(name: str, configs: list[str], overrides: dict[str, object], env: dict[str, str]) -> float:
    cmd = bundle_command([_CONFIGS / c for c in configs], overrides)
    print(f"\n=== {name}: {' '.join(configs)} ===", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise TLKError(
            f"stage '{name}' failed (exit {proc.returncode}); see the output above. Command: {' '.join(cmd)}"
        )
    return time.perf_counter() - t0


def run_demo(
    out_dir: str = "kidney_da_demo",
    pretrain_epochs: int = 60,
    adapt_epochs: int = 3,
    num_threads: int = 0,
    device: str = "auto",
) -> str:
    """Prepare the demo data, pretrain on the source, adapt without target labels, evaluate both on the target.

    Args:
        out_dir: working folder (``demo_data/``, ``models/``, ``eval/`` are created inside). Default
            ``kidney_da_demo``. Re-running reuses the data and resumes training from the last checkpoints.
        pretrain_epochs: source epochs >= 1 (default 60, the README numbers).
        adapt_epochs: adaptation epochs of 10 target steps each, >= 1 (default 3, as train.json).
        num_threads: torch threads (0 = all usable cores).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The Dice table (markdown), also written to ``out_dir/eval/dice_table.md``.

    Raises:
        TLKError: a stage failed (its output is shown above the message).
    """
    check_positive_int("pretrain_epochs", pretrain_epochs)
    check_positive_int("adapt_epochs", adapt_epochs)
    out = Path(out_dir).resolve()
    data, models, evals = out / "demo_data", out / "models", out / "eval"
    common: dict[str, object] = {
        "dataset_dir": data,
        "demo_dir": data,
        "ckpt_dir": models,
        "output_dir": evals,
        "num_threads": int(num_threads),
    }
    if device != "auto":
        common["device"] = device
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    times = {
        "pretrain": _stage(
            "source pretraining", ["train.json", "pretrain.json"], {**common, "epochs": pretrain_epochs}, env
        ),
        "adapt": _stage("label-free adaptation", ["train.json"], {**common, "epochs": adapt_epochs}, env),
        "evaluate": _stage(
            "target evaluation",
            ["train.json", "evaluate.json"],
            {
                **common,
                "checkpoints": {"source_only": str(models / "pretrained.pt"), "adapted": str(models / "model.pt")},
            },
            env,
        ),
    }
    table = (evals / "dice_table.md").read_text().strip()
    summary = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    return f"{table}\n\nwall time: {summary}; outputs in {out}"
