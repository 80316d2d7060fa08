# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The zoo's main job: AMOS→KiTS kidney domain adaptation end to end on the demo phantoms.

``python -m tlk_components kidney-demo --out_dir OUT_DIR`` (or :func:`run_demo`) writes the demo data, then runs
the bundle's real configs through MONAI's bundle runner (``monai.bundle.run``, what ``python -m monai.bundle run``
calls), one stage after the other, each in its own process:

1. ``train.json + pretrain.json`` — supervised on the labelled source (AMOS22-style phantoms);
2. ``train.json`` — label-free adaptation to the target (KiTS19-style phantoms; no target label is read);
3. ``train.json + evaluate.json`` — target kidney Dice of the source-only and adapted models side by side.

The stages' full output goes to ``OUT_DIR/logs/main_job.log`` (appended, one header per run); the terminal shows
one progress bar per stage and, at the end, the source-only / adapted Dice table (also in
``OUT_DIR/eval/dice_table.md``). A failing stage prints the last lines of its output and the log's path.

Start-up: on Linux the stages are children of a ``multiprocessing`` fork server that imports torch, MONAI, ignite
and ``tlk_components`` once (:data:`_PRELOAD`), so only the first stage pays for the imports (~9 s on the 2-core
CPU, a third of the adaptation stage when every stage was a ``python -m monai.bundle run`` of its own); each stage
still runs in a fresh process (its own threads, seeds, logging and memory). Elsewhere each stage is a
``python -m monai.bundle run`` subprocess. Either way a stage appends its output to the log, which the job follows
for the progress bars, and the log records the equivalent ``python -m monai.bundle run`` command of every stage.
"""

from __future__ import annotations

import collections
import io
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tqdm import tqdm

from tlk_components.utils.errors import TLKError
from tlk_components.utils.validation import check_positive_int, look_up_option
from tlk_components.zoo.registry import find_bundle
from tlk_components.zoo.runner import bundle_command

__all__ = ["LOG_NAME", "run_demo"]

LOG_NAME = "logs/main_job.log"
#: the bundle whose configs the job runs (found with ``zoo.registry.find_bundle``)
BUNDLE = "kidney_ct_da_segmentation"
#: data size -> config overrides; "tiny" (4 + 4 small phantoms) is what the tests run.
_SIZES: dict[str, dict[str, object]] = {
    "demo": {},
    "tiny": {"patch_size": [16, 16, 16], "epoch_length": 2},
}
# MONAI's StatsHandler iteration line and the evaluation's tqdm frames
_TRAIN_PROGRESS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
_EVAL_PROGRESS = re.compile(r"evaluate (\S+?):\s*(\d+)%")
_TAIL_LINES = 40
#: what the stages import (the configs' ``imports`` and their engines), imported once by the fork server
_PRELOAD = (
    "torch",
    "nibabel",
    "ignite.engine",
    "monai.bundle",
    "monai.transforms",
    "monai.engines",
    "monai.handlers",
    "monai.inferers",
    "tlk_components.data.kidney",
    "tlk_components.workflows.kidney_da",
    "tlk_components.engines.trainers.domain_adaptation",
    "tlk_components.engines.inference.sliding_window",
    "tlk_components.engines.inference.segmentation",
)
#: start the stages from a preloaded fork server (Linux); elsewhere ``python -m monai.bundle run`` subprocesses
_FORK_STAGES = sys.platform.startswith("linux")
_POLL_S = 0.05


class _StageProcess(Protocol):
    """What :func:`_stage` needs of a running stage (its output goes to the log file)."""

    def running(self) -> bool: ...

    def wait(self) -> int: ...

    def kill(self) -> None: ...


def _child_main(
    log_path: str, config_files: list[str], overrides: dict[str, Any], env: dict[str, str], cwd: str
) -> None:
    """Body of a forked stage: the job's environment and working folder (the fork server keeps those it started
    with), stdout and stderr (the descriptors and ``sys``'s streams) appended to the log, then MONAI's bundle runner
    on the configs with the overrides (``a__b`` keys become the nested id ``a#b``)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
    from monai.bundle import run  # noqa: PLC0415  (preloaded by the fork server)

    run(config_file=config_files, **{k.replace("__", "#"): v for k, v in overrides.items()})


class _ForkedStage:
    """One stage in a child of the fork server, which imported :data:`_PRELOAD` once and has run no torch op (a child
    forked from a process whose OpenMP pool has run would hang in its first parallel op)."""

    def __init__(self, log_path: Path, config_files: list[str], overrides: dict[str, Any], env: dict[str, str]) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(_PRELOAD))
        values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in overrides.items()}
        args = (str(log_path), config_files, values, env, os.getcwd())
        self.proc = ctx.Process(target=_child_main, args=args, name="kidney-stage")
        self.proc.start()

    def running(self) -> bool:
        return self.proc.is_alive()

    def wait(self) -> int:
        self.proc.join()
        return 1 if self.proc.exitcode is None else self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()


class _Subprocess:
    """One stage as ``python -m monai.bundle run``, its output appended to the log."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: BinaryIO) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self) -> int:
        return self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()


def _launch(
    cmd: list[str], configs: list[Path], overrides: dict[str, object], env: dict[str, str], log: BinaryIO
) -> _StageProcess:
    """Start one stage, appending its output to ``log``: a fork-server child on Linux, else ``cmd`` (the
    equivalent ``python -m monai.bundle run``) as a subprocess."""
    if _FORK_STAGES:
        return _ForkedStage(Path(log.name), [str(c) for c in configs], dict(overrides), env)
    return _Subprocess(cmd, env, log)


def _follow(path: Path, offset: int, proc: _StageProcess) -> Iterator[bytes]:
    """Lines appended to ``path`` after ``offset`` while ``proc`` runs (and what is left once it ends)."""
    pending = b""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            alive = proc.running()
            chunk = f.read(1 << 16)
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                yield from (line + b"\n" for line in lines)
            elif not alive:
                break
            else:
                time.sleep(_POLL_S)
    if pending:
        yield pending


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
    paths = [find_bundle(BUNDLE) / "configs" / c for c in configs]
    cmd = bundle_command(paths, overrides)
    log.write(f"\n=== {name}: {' '.join(configs)} ===\n$ {' '.join(cmd)}\n".encode())
    log.flush()
    offset = log.tell()
    progress = _StageProgress(n_models)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    t0 = time.perf_counter()
    proc = _launch(cmd, paths, overrides, env, log)
    bar = tqdm(
        total=100, desc=f"{name:<21}", bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}]", file=sys.stderr
    )
    with bar:
        try:
            for raw in _follow(log_path, offset, proc):  # progress-bar frames (\r) stay inside one line
                for part in raw.decode("utf-8", "replace").split("\r"):
                    part = part.strip()
                    if part:
                        tail.append(part)
                        done = round(100 * progress.update(part))
                        if done > bar.n:
                            bar.update(done - bar.n)
        except BaseException:  # Ctrl-C: do not leave the stage running
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
        log.seek(0, os.SEEK_END)
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
    pretrain_epochs: int | None = None,
    adapt_epochs: int | None = None,
    num_threads: int | None = None,
    device: str = "auto",
    size: str = "demo",
) -> str:
    """Prepare the demo data, pretrain on the source, adapt without target labels, evaluate both on the target.

    Args:
        out_dir: working folder (``demo_data/``, ``models/``, ``eval/``, ``logs/`` are created inside). Default
            ``kidney_da_demo``. Re-running reuses the data and resumes training from the last checkpoints.
        pretrain_epochs: source epochs >= 1; None (default): ``pretrain.json``'s (the README numbers).
        adapt_epochs: adaptation epochs >= 1; None (default): ``train.json``'s.
        num_threads: torch threads >= 1; None (default): the bundles decide (``configure_threads``: env
            ``TLK_NUM_THREADS``, else the usable cores).
        device: ``auto``, ``cpu`` or ``cuda``.
        size: ``demo`` (default, the README numbers) or ``tiny`` (4 + 4 small phantoms, coarse spacing; a smoke
            test in about a minute). Used when ``out_dir/demo_data`` is written, i.e. on the first run.

    Returns:
        The Dice table (markdown), also written to ``out_dir/eval/dice_table.md``, and the stages' wall times.
        Every stage's full output is in ``out_dir/logs/main_job.log``.

    Raises:
        TLKError: a stage failed (its last output lines and the log's path are in the message).
    """
    pretrain = {} if pretrain_epochs is None else {"epochs": check_positive_int("pretrain_epochs", pretrain_epochs)}
    adapt = {} if adapt_epochs is None else {"epochs": check_positive_int("adapt_epochs", adapt_epochs)}
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
        **_SIZES[size],
    }
    if num_threads is not None:
        common["num_threads"] = int(num_threads)
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
                {**common, **pretrain},
                env,
                log,
                log_path,
            ),
            "adapt": _stage("label-free adaptation", ["train.json"], {**common, **adapt}, env, log, log_path),
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
