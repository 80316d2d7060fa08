# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Unit tests of the shared CT transforms: nnU-Net augmentation and compact sampling indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

from tlk_components.data.transforms import CompactFgBgIndicesd, nnunet_augmentation
from tlk_components.utils.errors import ConfigError

#: The kidney bundle's augmentation as it stood in its train.json up to 0.7.1, MONAI transforms written out.
EXPLICIT = [
    {
        "_target_": "RandAffined",
        "keys": ["image", "label"],
        "prob": 0.2,
        "rotate_range": [0.26, 0.26, 0.26],
        "scale_range": [0.15, 0.15, 0.15],
        "mode": ["bilinear", "nearest"],
        "padding_mode": "border",
    },
    {"_target_": "RandGaussianNoised", "keys": "image", "prob": 0.1, "std": 0.1},
    {
        "_target_": "RandGaussianSmoothd",
        "keys": "image",
        "prob": 0.2,
        "sigma_x": [0.5, 1.0],
        "sigma_y": [0.5, 1.0],
        "sigma_z": [0.5, 1.0],
    },
    {"_target_": "RandScaleIntensityd", "keys": "image", "prob": 0.15, "factors": 0.25},
    {"_target_": "RandScaleIntensityFixedMeand", "keys": "image", "prob": 0.15, "factors": 0.25},
    {"_target_": "RandSimulateLowResolutiond", "keys": "image", "prob": 0.25, "zoom_range": [0.5, 1.0]},
    {"_target_": "RandAdjustContrastd", "keys": "image", "prob": 0.3, "gamma": [0.7, 1.5]},
    *[{"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": a} for a in (0, 1, 2)],
]


def _case(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((1, 24, 20, 16), generator=g)
    label = (image > 0.7).to(torch.uint8)
    return {"image": image, "label": label}


def test_nnunet_augmentation_defaults_are_the_explicit_monai_list():
    parser = ConfigParser({"aug": EXPLICIT})
    explicit = Compose(parser.get_parsed_content("aug"))
    shared = Compose(nnunet_augmentation())
    assert [type(t).__name__ for t in shared.transforms] == [type(t).__name__ for t in explicit.transforms]
    explicit.set_random_state(7)
    shared.set_random_state(7)
    changed = 0
    for i in range(40):  # 40 draws: every transform fires at least once
        a, b = explicit(_case(i)), shared(_case(i))
        for key in ("image", "label"):
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), (i, key)
        changed += int(not torch.equal(torch.as_tensor(a["image"]), _case(i)["image"]))
    assert changed > 30  # it does augment


def test_nnunet_augmentation_mirrors_only_the_given_axes_and_checks_its_arguments():
    flips = [t for t in nnunet_augmentation(mirror_axes=[1, 2]) if isinstance(t, RandFlipd)]
    assert [t.flipper.spatial_axis for t in flips] == [1, 2]
    assert not [t for t in nnunet_augmentation(mirror_axes=[]) if isinstance(t, RandFlipd)]
    for kwargs, message in [
        ({"noise_prob": 1.5}, "noise_prob=1.5"),
        ({"scale_range": 1.0}, r"scale_range=1.0: expected a number in \[0, 1\)"),
        ({"gamma": [1.5, 0.7]}, "low <= high"),
        ({"gamma": [0.0, 1.0]}, "gamma="),
        ({"low_resolution_zoom": [0.5, 1.5]}, "low_resolution_zoom="),
        ({"mirror_axes": [3]}, r"mirror_axes\[0\]=3"),
        ({"keys": "image"}, r"expected \[image_key, label_key\]"),
        ({"rotate_range": -0.1}, "rotate_range=-0.1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            nnunet_augmentation(**kwargs)


def test_compact_indices_with_an_image_threshold_keep_background_centres_inside_the_body():
    image = np.zeros((1, 20, 20, 10), np.float32)
    image[0, 4:16, 4:16] = 1.0  # the "body"; the rest is air (0)
    label = np.zeros((1, 20, 20, 10), np.uint8)
    label[0, 8:10, 8:10, 3:6] = 3
    out = CompactFgBgIndicesd("label", image_key="image", image_threshold=0.0)({"image": image, "label": label})
    bg = out["label_bg_indices"]
    assert bg.size == 12 * 12 * 10 - 2 * 2 * 3 and (image.reshape(-1)[bg] > 0).all()
    assert (label.reshape(-1)[bg] == 0).all() and out["label_fg_indices"].size == 12
    # the same centres RandCropByPosNegLabeld would draw from without precomputed indices
    crop = RandCropByPosNegLabeld(
        ["image", "label"], "label", [4, 4, 4], pos=0, neg=1, num_samples=200, image_key="image", image_threshold=0
    )
    crop.set_random_state(0)
    assert all(float(p["image"].max()) > 0 for p in crop({"image": image, "label": label}))
    everything = CompactFgBgIndicesd("label")({"image": image, "label": label})["label_bg_indices"]
    assert everything.size == 20 * 20 * 10 - 12
    with pytest.raises(ValueError, match="spatial shape"):
        CompactFgBgIndicesd("label", image_key="image")({"image": image[:, :10], "label": label})


def test_compact_indices_cap_and_spread_the_background() -> None:
    label = np.zeros((1, 20, 30, 40), np.uint8)
    label[0, 5:8, 10:12, 3:9] = 1
    out = CompactFgBgIndicesd("label", max_background=1000)({"label": label})
    assert out["label_fg_indices"].size == 3 * 2 * 6
    bg = out["label_bg_indices"]
    assert 900 <= bg.size <= 1000 and (label.reshape(-1)[bg] == 0).all()
    z = np.unravel_index(bg, label.shape[1:])[0]
    assert z.min() <= 1 and z.max() >= 18  # spread over the whole volume, not the first rows
    with pytest.raises(ConfigError, match="max_background"):
        CompactFgBgIndicesd("label", max_background=0)
    with pytest.raises(ValueError, match="one-channel"):
        CompactFgBgIndicesd("label")({"label": np.zeros((2, 4, 4, 4))})
