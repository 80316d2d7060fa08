# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Masked focal loss, masked smooth-L1 and the combined box-localization loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import FocalLoss

from tlk_components.losses.focal import BoxLocalizationLoss, MaskedFocalLoss
from tlk_components.losses.smooth_l1 import MaskedSmoothL1Loss
from tlk_components.utils.errors import ConfigError


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 50, 3, generator=g) * 3
    y = (torch.rand(2, 50, 3, generator=g) > 0.8).float()
    return x, y


def test_gamma_zero_no_alpha_equals_bce():
    x, y = _data()
    loss = MaskedFocalLoss(alpha=None, gamma=0.0, normalization="elements")
    torch.testing.assert_close(loss(x, y), F.binary_cross_entropy_with_logits(x, y))


def test_retinanet_alpha_equals_monai_focal_loss():
    x, y = _data(1)
    ours = MaskedFocalLoss(alpha=0.25, gamma=2.0, normalization="elements")(x, y)
    ref = FocalLoss(alpha=0.25, gamma=2.0, reduction="mean")(x.permute(0, 2, 1), y.permute(0, 2, 1))
    torch.testing.assert_close(ours, ref)


def test_jarvis_alpha_weights_negatives_one():
    x, y = _data(2)
    jar = MaskedFocalLoss(alpha=0.25, gamma=2.0, alpha_mode="jarvis", normalization="none")(x, y)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    ref = torch.where(y > 0, 0.25 * (1 - p) ** 2, p**2) * ce
    torch.testing.assert_close(jar, ref.sum())


def test_masked_elements_do_not_count():
    x, y = _data(3)
    w = (torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) > 0.3).float()
    loss = MaskedFocalLoss(normalization="positives")
    base = loss(x, y, w)
    x2 = torch.where(w > 0, x, torch.full_like(x, 50.0))  # wild logits where masked
    torch.testing.assert_close(loss(x2, y, w), base)
    # normalised by the number of positives inside the mask
    full = MaskedFocalLoss(normalization="none")(x, y, w)
    torch.testing.assert_close(base, full / (y * w).sum())
    # no positive at all: normaliser clamps at 1 (a tumour-free batch still trains)
    assert torch.isfinite(loss(x, torch.zeros_like(y))).all()


def test_gradients_only_through_unmasked():
    x, y = _data(5)
    x.requires_grad_(True)
    w = torch.zeros_like(x)
    w[:, :10] = 1
    MaskedFocalLoss()(x, y, w).backward()
    assert (x.grad[:, 10:] == 0).all() and (x.grad[:, :10] != 0).any()


def test_smooth_l1_masked_and_normalised():
    pred = torch.tensor([[[0.5, 2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    target = torch.zeros_like(pred)
    w = torch.tensor([[[1.0] * 4, [0.0] * 4]])
    # beta 1: 0.5*0.25 + (2 - 0.5) = 1.625 over 1 positive anchor
    torch.testing.assert_close(MaskedSmoothL1Loss(beta=1.0)(pred, target, w), torch.tensor(1.625))
    torch.testing.assert_close(
        MaskedSmoothL1Loss(beta=1.0, normalization="elements")(pred, target, w), torch.tensor(1.625 / 8)
    )
    torch.testing.assert_close(
        MaskedSmoothL1Loss(beta=1.0, normalization="weights")(pred, target, w), torch.tensor(1.625 / 4)
    )
    torch.testing.assert_close(
        MaskedSmoothL1Loss(beta=1.0, scale=2.0, normalization="none")(pred, target, w), torch.tensor(3.25)
    )


def test_box_loss_returns_fixed_keys_from_head_maps():
    loss = BoxLocalizationLoss()
    outputs = {
        "classification": [torch.zeros(2, 9, 4, 4), torch.zeros(2, 9, 2, 2)],
        "box_regression": [torch.zeros(2, 36, 4, 4), torch.zeros(2, 36, 2, 2)],
    }
    n = 9 * 16 + 9 * 4
    targets = {
        "cls_target": torch.zeros(2, n, 1),
        "cls_weight": torch.ones(2, n, 1),
        "reg_target": torch.zeros(2, n, 4),
        "reg_weight": torch.zeros(2, n, 4),
    }
    out = loss(outputs, targets)
    assert set(out) == {"classification", "bbox_regression"}
    assert float(out["bbox_regression"]) == 0.0 and float(out["classification"]) > 0
    torch.testing.assert_close(loss.total(out), out["classification"] + out["bbox_regression"])
    with pytest.raises(ValueError, match="disagree"):
        loss(outputs, {**targets, "cls_target": torch.zeros(2, n + 1, 1)})
    with pytest.raises(KeyError, match="BoxTargetsd"):
        loss(outputs, {"cls_target": targets["cls_target"]})


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (MaskedFocalLoss, dict(gamma=-1.0), "gamma"),
        (MaskedFocalLoss, dict(alpha=1.5), "alpha"),
        (MaskedFocalLoss, dict(normalization="positive"), "Did you mean 'positives'"),
        (MaskedFocalLoss, dict(alpha_mode="keras"), "alpha_mode"),
        (MaskedSmoothL1Loss, dict(beta=0.0), "beta"),
    ],
)
def test_ill_loss_arguments(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)
