# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Progress bars for ignite engines (the one progress handler of every bundle)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.validation import check_positive_int

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """An ignite ``ProgressBar`` that shows the running loss and redraws every ``every`` iterations.

    ignite's bar redraws at every iteration, which costs more than a whole training step of a small network;
    redrawing every 10 iterations keeps the progress visible at a negligible cost. Attaches on rank 0 only.

    Args:
        every: redraw interval in iterations, >= 1. Default 10.
        output_key: entry of ``engine.state.output`` shown (``"loss"``); None shows no value.
        persist: keep the bar after each epoch. Default False.
    """

    def __init__(self, every: int = 10, output_key: str | None = "loss", persist: bool = False) -> None:
        self.every = check_positive_int("every", every)
        self.output_key, self.persist = output_key, bool(persist)

    def _transform(self, output: Any) -> dict[str, float]:
        if isinstance(output, list):  # a decollated batch
            output = output[0]
        value = output[self.output_key] if isinstance(output, Mapping) else output
        return {self.output_key: float(value.item() if isinstance(value, torch.Tensor) else value)}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        if not is_rank0():
            return
        transform: Callable[[Any], Any] | None = self._transform if self.output_key is not None else None
        ProgressBar(persist=self.persist).attach(
            engine, output_transform=transform, event_name=Events.ITERATION_COMPLETED(every=self.every)
        )
