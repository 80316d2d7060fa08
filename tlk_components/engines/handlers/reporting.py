# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Handlers that leave results a person can read: ``metrics.json``, loss-curve PNGs, bar charts.

Every file is written atomically on rank 0.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.io import atomic_write_bytes, atomic_write_json
from tlk_components.utils.validation import check_positive_int

__all__ = [
    "LossCurvePlotter",
    "MetricHistoryRecorder",
    "MetricsJsonWriter",
    "WallTimeRecorder",
    "legend_outside",
    "moving_average",
    "save_bar_chart",
    "save_figure",
    "smoothed_curve",
    "to_jsonable",
]


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy scalars/arrays, dicts and lists -> plain JSON types (NaN -> None)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average; the first ``window-1`` points average what is available.

    For plotting use :func:`smoothed_curve`, which drops those partial windows (their few-sample averages make a
    spurious spike at the start of a loss curve).
    """
    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(v.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def smoothed_curve(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal moving average over full windows only: ``(x, y)`` with ``y[j]`` the mean of ``values[x[j]-window+1 :
    x[j]+1]``, so the curve starts at index ``window - 1``, where the average is defined.

    A series shorter than ``window`` is averaged over its whole length (one window of ``len(values)``).

    Args:
        values: the raw series (e.g. per-iteration losses).
        window: window length >= 1 (1: the raw series).

    Returns:
        ``x`` (indices into ``values``) and ``y``, of equal length (empty for an empty series).
    """
    v = np.asarray(values, dtype=float)
    w = max(1, min(int(window), v.size))
    if v.size == 0:
        return np.arange(0), v
    c = np.cumsum(np.insert(v, 0, 0.0))
    y = (c[w:] - c[:-w]) / w
    return np.arange(w - 1, v.size), y


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """Place ``ax``'s legend to the right of the axes, off the data (figures are saved with a tight box)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def save_bar_chart(
    values: Mapping[str, Sequence[float]] | Sequence[float],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    xlabel: str = "",
) -> Path:
    """Grouped bar chart: one group per label, one bar per series (a single sequence is one series).

    Several series get a legend outside the axes, to the right, so it never covers a bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = dict(values) if isinstance(values, Mapping) else {"": list(values)}
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) * max(1, n / 3)), 4))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=name or None)
    # long names (case ids, organ names) overlap when laid flat: slant them once they would not fit under a bar
    slant = max((len(str(lb)) for lb in labels), default=0) > 6
    ax.set_xticks(x, labels, rotation=45 if slant else 0, ha="right" if slant else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if n > 1:
        legend_outside(ax, fontsize="small", ncol=1 if n <= 12 else 2)
    return save_figure(fig, path)


class MetricsJsonWriter:
    """Write ``engine.state.metrics`` (plus extras) to ``<output_dir>/<filename>`` when the engine completes.

    Args:
        output_dir: folder (created).
        filename: default ``metrics.json``.
        keys: when given, every key must be present (the ``eval_metrics`` keys of metadata.json); raises KeyError
            naming the missing ones.
        extra: callable ``engine -> dict`` merged into the output (e.g. per-class details).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "metrics.json",
        keys: Sequence[str] | None = None,
        extra: Callable[[Engine], Mapping[str, Any]] | None = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.keys = list(keys) if keys is not None else None
        self.extra = extra

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = {k: to_jsonable(v) for k, v in engine.state.metrics.items()}
        if self.extra is not None:
            out.update(to_jsonable(dict(self.extra(engine))))
        if self.keys is not None:
            missing = [k for k in self.keys if k not in out]
            if missing:
                raise KeyError(f"metrics {missing} named in eval_metrics were not computed; computed: {sorted(out)}")
        if is_rank0():
            atomic_write_json(self.path, out)


class LossCurvePlotter:
    """Record the per-iteration loss and redraw ``<output_dir>/loss_curve.png`` at every epoch end.

    Args:
        output_dir: folder for the PNG (created).
        output_transform: ``engine.state.output -> float`` (default: ``output["loss"]`` or the output itself).
        smoothing: moving-average window drawn over the raw curve (default 25, as in the MNIST study).
        filename: default ``loss_curve.png``.
        every_n_epochs: redraw every N epochs (>= 1, default 1); the curve is always drawn when training ends.
            Drawing costs tens of milliseconds, which matters for models whose epoch takes about a second.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        output_transform: Callable[[Any], float] | None = None,
        smoothing: int = 25,
        filename: str = "loss_curve.png",
        every_n_epochs: int = 1,
    ) -> None:

        self.path = Path(output_dir) / filename
        self.output_transform = output_transform
        self.smoothing = check_positive_int("smoothing", smoothing)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self._plot)
        engine.add_event_handler(Events.COMPLETED, self._plot)

    def _value(self, output: Any) -> float:
        if self.output_transform is not None:
            return float(self.output_transform(output))
        if isinstance(output, list):  # MONAI decollated batch
            output = output[0]
        if isinstance(output, Mapping):
            output = output["loss"]
        return float(output.item() if isinstance(output, torch.Tensor) else output)

    def _record(self, engine: Engine) -> None:
        self.losses.append(self._value(engine.state.output))

    def _plot(self, engine: Engine) -> None:
        if not is_rank0() or not self.losses:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(np.arange(1, len(self.losses) + 1), self.losses, alpha=0.3, label="loss")
        if self.smoothing > 1 and len(self.losses) >= self.smoothing:
            x, y = smoothed_curve(self.losses, self.smoothing)
            ax.plot(x + 1, y, label=f"moving average ({self.smoothing} iterations)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        legend_outside(ax, fontsize="small")
        save_figure(fig, self.path)


class MetricHistoryRecorder:
    """Record ``(epoch, iteration, training seconds, metric)`` after every validation.

    Attach to the TRAINER (the clock starts at its STARTED event); it listens to ``evaluator``'s STARTED/COMPLETED
    events. ``time_s`` is the wall time since training started MINUS the time spent in validation (so a baseline
    is not charged for being evaluated often). Writes ``output_path`` (JSON) after each validation, with ``best``
    and ``time_to_best_s`` (the first time the best value was reached).

    Args:
        evaluator: the validation engine.
        output_path: JSON file.
        metric_name: evaluator metric (default: the evaluator's key metric).
    """

    def __init__(self, evaluator: Engine, output_path: str | os.PathLike, metric_name: str | None = None) -> None:
        self.evaluator = evaluator
        self.path = Path(output_path)
        self.metric_name = metric_name
        self.t0: float | None = None
        self.eval_time = 0.0
        self._eval_t0 = 0.0
        self.trainer: Engine | None = None
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._start)
        self.evaluator.add_event_handler(Events.STARTED, self._eval_start)
        self.evaluator.add_event_handler(Events.COMPLETED, self)

    def _start(self, _engine: Engine) -> None:
        self.t0 = time.perf_counter()
        self.eval_time = 0.0

    def _eval_start(self, _engine: Engine) -> None:
        self._eval_t0 = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name not in engine.state.metrics:
            raise KeyError(f"MetricHistoryRecorder: metric {name!r} not in {list(engine.state.metrics)}")
        now = time.perf_counter()
        self.eval_time += now - self._eval_t0
        t = now - (self.t0 if self.t0 is not None else now) - self.eval_time  # training time, validation excluded
        state = self.trainer.state if self.trainer is not None else engine.state
        self.history.append(
            {
                "epoch": state.epoch,
                "iteration": state.iteration,
                "time_s": round(t, 3),
                name: float(engine.state.metrics[name]),
            }
        )
        best = max(self.history, key=lambda h: h[name])
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        atomic_write_json(
            self.path,
            {
                "metric": name,
                "best": best[name],
                "time_to_best_s": best["time_s"],
                "epoch_of_best": best["epoch"],
                "history": self.history,
            },
        )


class WallTimeRecorder:
    """Write ``{"train_time_s", "epochs", "iterations"}`` to ``output_path`` when the trainer completes.

    ``train_time_s`` runs from the trainer's STARTED to COMPLETED event (data caching and start-up excluded),
    minus the time spent in ``evaluator`` runs when one is given.
    """

    def __init__(self, output_path: str | os.PathLike, evaluator: Engine | None = None) -> None:
        self.path = Path(output_path)
        self.evaluator = evaluator
        self.t0 = 0.0
        self.eval_time = 0.0
        self._eval_t0 = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._done)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.STARTED, self._eval_start)
            self.evaluator.add_event_handler(Events.COMPLETED, self._eval_done)

    def _start(self, _engine: Engine) -> None:
        self.t0, self.eval_time = time.perf_counter(), 0.0

    def _eval_start(self, _engine: Engine) -> None:
        self._eval_t0 = time.perf_counter()

    def _eval_done(self, _engine: Engine) -> None:
        self.eval_time += time.perf_counter() - self._eval_t0

    def _done(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        t = time.perf_counter() - self.t0 - self.eval_time
        atomic_write_json(
            self.path, {"train_time_s": round(t, 3), "epochs": engine.state.epoch, "iterations": engine.state.iteration}
        )
