# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Checks a classification bundle runs in ``initialize``, before any compute: hyperparameters in range, and a
network that takes the dataset's input and gives one logit per class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["check_hyperparameters", "check_network_input"]


# ------------------------------------------------------------------------------------------------------ checks
#: hyperparameter name -> kind checked by :func:`check_hyperparameters`.
_INT_KEYS = {"epochs", "batch_size", "val_interval", "num_models"}


_POSITIVE_FLOAT_KEYS = {"learning_rate", "lr"}


def check_hyperparameters(**values: Any) -> dict[str, Any]:
    """Check named hyperparameters when a config is parsed, before any compute.

    ``epochs``, ``batch_size``, ``val_interval`` and ``num_models`` must be integers >= 1; ``learning_rate``/``lr``
    a finite number > 0; ``val_fraction`` in (0, 1); ``num_workers`` an integer >= 0. Other names are returned
    unchecked.

    Args:
        values: ``name=value`` pairs, e.g. ``check_hyperparameters(epochs=@epochs, batch_size=@batch_size)``.

    Returns:
        ``values`` unchanged.

    Raises:
        ConfigError: naming the key, the value received, the valid range and the override that fixes it.

    Example:
        >>> check_hyperparameters(epochs=3, batch_size=32, learning_rate=1e-3)
        {'epochs': 3, 'batch_size': 32, 'learning_rate': 0.001}
    """
    for name, value in values.items():
        if name in _INT_KEYS:
            check_positive_int(name, value)
        elif name == "num_workers":
            check_positive_int(name, value, minimum=0)
        elif name in _POSITIVE_FLOAT_KEYS:
            v = check_in_range(name, value, 0.0, None, low_inclusive=False)
            if v == float("inf"):
                raise ConfigError(f"{name}={value!r}: expected a finite number > 0, e.g. --{name} 0.001")
        elif name == "val_fraction":
            if check_in_range(name, value, 0.0, 1.0, low_inclusive=False) >= 1.0:
                raise ConfigError(f"{name}={value!r}: expected a number in (0, 1) (the held-out share), e.g. 0.1")
    return values


def check_network_input(
    network: torch.nn.Module, dataset: Any, num_classes: int | None = None, key: str = "network_def"
) -> torch.nn.Module:
    """Run one sample of ``dataset`` through ``network`` and check that its size and the class count fit.

    Catches, before training starts, a network whose input size does not match the images (e.g.
    ``dims[0]=100`` for 28x28 images) and one with fewer outputs than the labels need.

    Args:
        network: the classifier (in any mode; left unchanged).
        dataset: with ``tensors()`` (``"image"``, optional ``"label"``) or ``__getitem__`` returning such a dict.
        num_classes: expected number of outputs; default: ``max(label) + 1`` when labels exist, else unchecked.
        key: config key named in the error (default ``network_def``).

    Returns:
        ``network``.

    Raises:
        ConfigError: the forward pass fails on the sample, or the output has the wrong number of classes.
    """
    if hasattr(dataset, "tensors"):
        tensors = dataset.tensors()
        sample, labels = tensors["image"][:1], tensors.get("label")
    else:
        item = dataset[0]
        sample, labels = item["image"][None], None
    if num_classes is None and labels is not None and len(labels):
        num_classes = int(labels.max()) + 1
    net = unwrap_model(network)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(sample.to(device))
    except RuntimeError as e:
        per_sample = int(np.prod(sample.shape[1:]))
        raise ConfigError(
            f"{key}: the network does not accept the data: one image is {tuple(sample.shape[1:])} = {per_sample} "
            f"values ({type(e).__name__}: {str(e).splitlines()[0][:160]}). Make the first layer size match, "
            f'e.g. --{key}#dims "[{per_sample}, 32, 32, 32, 10]", or use images of the size the network expects'
        ) from None
    finally:
        net.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"{key}: expected B x num_classes logits, the network returned shape {tuple(out.shape)}")
    if num_classes is not None and out.shape[1] < num_classes:
        raise ConfigError(
            f"{key}: the network has {out.shape[1]} outputs but the labels need {num_classes} classes; "
            f"set the last layer size to {num_classes}"
        )
    return network
