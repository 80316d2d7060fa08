# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The zoo's main job: AMOS→KiTS kidney domain adaptation end to end on the demo phantoms.

``python -m tlk_components kidney-demo --out_dir OUT_DIR`` (or :func:`run_demo`) writes the demo data, then runs
the bundle's real configs through ``python -m monai.bundle run``, one stage after the other:

1. ``train.json + pretrain.json`` — supervised on the labelled source (AMOS22-style phantoms);
2. ``train.json`` — label-free adaptation to the target (KiTS19-style phantoms; no target label is read);
3. ``train.json + evaluate.json`` — target kidney Dice of the source-only and adapted models side by side.

The stages' full output goes to ``OUT_DIR/logs/main_job.log`` (appended, one header per run); the terminal shows
one progress bar per stage and, at the end, the source-only / adapted Dice table (also in
``OUT_DIR/eval/dice_table.md``). A failing stage prints the last lines of its output and the log's path.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from tlk_components.utils.errors import TLKError
from tlk_components.utils.validation import check_positive_int, look_up_option
from tlk_components.zoo.runner import bundle_command

__all__ = ["LOG_NAME", "run_demo"]

_CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "kidney_ct_da_segmentation" / "configs"
LOG_NAME = "logs/main_job.log"
#: data size -> config overrides; "tiny" (4 + 4 small phantoms) is what the tests run.
_SIZES: dict[str, dict[str, object]] = {
    "demo": {},
    "tiny": {"patch_size": [16, 16, 16], "epoch_length": 2},
}
# MONAI's StatsHandler iteration line and the evaluation's tqdm frames
_TRAIN_PROGRESS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
_EVAL_PROGRESS = re.compile(r"evaluate (\S+?):\s*(\d+)%")
_TAIL_LINES = 40


class _StageProgress:
    """Turn a stage's output lines into a completed fraction (training iterations, or evaluated models)."""

    def __init__(self, n_models: int = 1) -> None:
        self.n_models = max(1, n_models)
        self.models: dict[str, float] = {}
        self.fraction = 0.0

    def update(self, line: str) -> float:
        m = _TRAIN_PROGRESS.search(line)
        if m:
            e, n_e, i, n_i = (int(g) for g in m.groups())
            self.fraction = max(self.fraction, (e - 1 + i / max(n_i, 1)) / max(n_e, 1))
        m = _EVAL_PROGRESS.search(line)
        if m:
            self.models[m.group(1)] = max(self.models.get(m.group(1), 0.0), int(m.group(2)) / 100)
            self.fraction = max(self.fraction, sum(self.models.values()) / self.n_models)
        return min(self.fraction, 1.0)


def _stage(
    name: str,
    configs: list[str],
    overrides: dict[str, object],
    env: dict[str, str],
    log: BinaryIO,
    log_path: Path,
    n_models: int = 1,
) -> float:
    """Run one stage with its output in ``log`` and a progress bar on the terminal; returns its wall time (s)."""
    cmd = bundle_command([_CONFIGS / c for c in configs], overrides)
    log.write(f"\n=== {name}: {' '.join(configs)} ===\n$ {' '.join(cmd)}\n".encode())
    log.flush()
    progress = _StageProgress(n_models)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    t0 = time.perf_counter()
    bar = tqdm(
        total=100, desc=f"{name:<21}", bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}]", file=sys.stderr
    )
    with bar:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for raw in proc.stdout or ():  # lines end at \n; progress-bar frames (\r) stay inside one line
            log.write(raw)
            for part in raw.decode("utf-8", "replace").split("\r"):
                part = part.strip()
                if part:
                    tail.append(part)
                    done = round(100 * progress.update(part))
                    if done > bar.n:
                        bar.update(done - bar.n)
        rc = proc.wait()
        log.flush()
        if rc == 0 and bar.n < 100:
            bar.update(100 - bar.n)
    if rc != 0:
        last = "\n".join(f"  {line}" for line in tail)
        raise TLKError(
            f"stage '{name}' failed (exit {rc}); its last lines:\n{last}\nfull log: {log_path}\n"
            f"command: {' '.join(cmd)}"
        )
    return time.perf_counter() - t0


def run_demo(
    out_dir: str = "kidney_da_demo",
    pretrain_epochs: int = 150,
    adapt_epochs: int = 3,
    num_threads: int = 0,
    device: str = "auto",
    size: str = "demo",
) -> str:
    """Prepare the demo data, pretrain on the source, adapt without target labels, evaluate both on the target.

    Args:
        out_dir: working folder (``demo_data/``, ``models/``, ``eval/``, ``logs/`` are created inside). Default
            ``kidney_da_demo``. Re-running reuses the data and resumes training from the last checkpoints.
        pretrain_epochs: source epochs >= 1 (default 150, as pretrain.json; the README numbers).
        adapt_epochs: adaptation epochs of 10 target steps each, >= 1 (default 3, as train.json).
        num_threads: torch threads (0 = all usable cores).
        device: ``auto``, ``cpu`` or ``cuda``.
        size: ``demo`` (default, the README numbers) or ``tiny`` (4 + 4 small phantoms, coarse spacing; a smoke
            test in about a minute). Used when ``out_dir/demo_data`` is written, i.e. on the first run.

    Returns:
        The Dice table (markdown), also written to ``out_dir/eval/dice_table.md``, and the stages' wall times.
        Every stage's full output is in ``out_dir/logs/main_job.log``.

    Raises:
        TLKError: a stage failed (its last output lines and the log's path are in the message).
    """
    check_positive_int("pretrain_epochs", pretrain_epochs)
    check_positive_int("adapt_epochs", adapt_epochs)
    size = look_up_option("size", size, _SIZES)
    out = Path(out_dir).resolve()
    data, models, evals = out / "demo_data", out / "models", out / "eval"
    if size != "demo" and not (data.is_dir() and any(data.iterdir())):
        from tlk_components.data import kidney  # noqa: PLC0415  (writes phantoms; only when asked)

        kidney.write_demo(data, size=size, seed=0)
    common: dict[str, object] = {
        "dataset_dir": data,
        "demo_dir": data,
        "ckpt_dir": models,
        "output_dir": evals,
        "num_threads": int(num_threads),
        **_SIZES[size],
    }
    if device != "auto":
        common["device"] = device
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = out / LOG_NAME
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115  (closed below)
    except OSError as e:
        raise TLKError(
            f"cannot write the main job's log {log_path} ({e.strerror}); pass a writable --out_dir"
        ) from None
    print(f"kidney-demo: full log in {log_path}", file=sys.stderr, flush=True)
    checkpoints = {"source_only": str(models / "pretrained.pt"), "adapted": str(models / "model.pt")}
    with log:
        log.write(f"\n##### main job {time.strftime('%Y-%m-%d %H:%M:%S')} in {out} (size {size})\n".encode())
        times = {
            "pretrain": _stage(
                "source pretraining",
                ["train.json", "pretrain.json"],
                {**common, "epochs": pretrain_epochs},
                env,
                log,
                log_path,
            ),
            "adapt": _stage(
                "label-free adaptation", ["train.json"], {**common, "epochs": adapt_epochs}, env, log, log_path
            ),
            "evaluate": _stage(
                "target evaluation",
                ["train.json", "evaluate.json"],
                {**common, "checkpoints": checkpoints},
                env,
                log,
                log_path,
                n_models=len(checkpoints),
            ),
        }
        table = (evals / "dice_table.md").read_text().strip()
        summary = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        log.write(f"\n##### main job done: {summary}\n".encode())
    return f"{table}\n\nwall time: {summary}; outputs in {out}; full log: {log_path}"
