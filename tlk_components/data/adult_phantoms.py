# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Adult, real-geometry abdominal CT phantoms shaped like KiTS19 / AMOS22 scans (opt-in generator).

:mod:`tlk_components.data.phantoms` draws child-sized anatomy in one fixed 192 x 192 x 160 mm field of view.
This module draws an *adult* patient and a *per-case scan*: the body size, the scan range along z, the
in-plane reconstruction field of view, the voxel spacing and the contrast phase are all drawn per case from a
:class:`DomainProfile` (:data:`AMOS_PROFILE`, :data:`KITS_PROFILE`). All random choices are made once, in
:func:`draw_case_geometry`, as a :class:`CaseGeometry` in patient millimetres; rendering only samples that
geometry on a voxel grid, so the ``"real"`` size (512 x 512 in-plane at the drawn spacing), the ``"demo"`` size
(coarse, default 4.5 x 4.5 x 5 mm) and the ``"tiny"`` size (9 x 9 x 10 mm, for unit tests) of one case show the
same body, the same organs at the same millimetre positions and the same field of view.

Geometry (adult reference values, each drawn per case; world frame RAS+ mm, x = patient right, y = anterior,
z = superior; the in-plane origin is the scanner isocentre, z = 0 is the L1/L2 disc):

* body: 300-380 mm wide (left-right), 200-280 mm antero-posterior (0.62-0.78 of the width), torso-shaped
  (superellipse) cross-section that widens over the pelvis and narrows over the chest; 10-30 mm of
  subcutaneous fat, a 6-12 mm muscle wall, visceral fat fraction 0.3-0.8. The body centre sits up to
  +-15 mm left-right and -30..+10 mm antero-posterior off the isocentre (patients lie on the table), so a body
  wider than the reconstruction circle is cut at the sides and table.
* height: vertebral period 31 mm x a height scale of 0.9-1.1 (L2 centre at -15.5 mm, L4 at -77.5 mm); right
  diaphragm dome at +105 mm, lung apex at +330 mm, aortic bifurcation at -80 mm (L4), pubic symphysis at
  -250 mm (all x the height scale).
* kidneys: 110 x 60 x 40 mm (cranio-caudal x transverse x antero-posterior), each axis +-15 %; centres
  50-80 mm (x the body-width scale, so 44-90 mm) from the midline, left centre at -10..+20 mm (L1-L2), the
  right one 10-20 mm lower, beside the spine in the posterior half of the body; long axis tilted 5-20 degrees
  medially (upper pole medial) and 5-20 degrees posteriorly; the hilum turned 20-45 degrees antero-medially;
  cortex, medulla (0.55-0.7 of the kidney), hilum notch with sinus fat, a 6-18 mm perirenal fat capsule,
  renal veins to the inferior vena cava. Optional exophytic tumours: radius log-uniform in
  ``DomainProfile.tumour_radius_mm`` (default 7.5-55 mm, i.e. 1.5-11 cm across); tumours over 35 mm sit
  deep and replace most of their kidney, those over 25 mm have a necrotic core.
* organs (every structure of :data:`~tlk_components.data.phantoms.ORGANS`): liver right upper (right lobe
  ~130 x 145 x 145 mm plus a left lobe), gallbladder under it, spleen left upper (~110 x 45 x 110 mm),
  stomach (fundus + body), pancreas across L1 in front of the aorta, duodenal C-loop, portal vein, adrenals
  above the kidneys, oesophagus down to the cardia, aorta (22-24 mm, bifurcating at L4) and inferior vena
  cava in front of the spine, bladder and prostate/uterus in the pelvis; unlabelled lungs, heart, ribs,
  spine with discs and canal, paraspinal and psoas muscles, pelvis and femoral heads, small bowel, colon
  and the table.

Scan (per case, see :data:`SCAN_RANGES_MM`): ``"kidney"`` 150-250 mm centred on the kidneys (KiTS19-like),
``"abdomen"`` 200-320 mm from the diaphragm down, ``"abdomen_pelvis"`` 350-480 mm, ``"chest_abdomen_pelvis"``
500-650 mm from the lung apex. The range is shifted or widened so that both kidneys (with tumours) always lie
at least 10 mm inside it. The in-plane field of view is the reconstruction circle (its diameter is the side of
the 512 x 512 matrix); voxels outside the circle hold -1024 HU, as in real scans.

Spacing (``"real"`` size): in-plane = FOV / 512, drawn per case in ``DomainProfile.inplane_spacing_mm``
(AMOS-like 0.6-0.9 mm, KiTS-like 0.6-0.98 mm); slices from ``DomainProfile.slice_spacing_probs``
(AMOS-like 1.25-5 mm, KiTS-like 0.5-5 mm), coarsened to the next listed value when the scan would exceed
``DomainProfile.max_real_slices`` (default 600) slices.

Appearance: contrast phase per case (``"arterial"`` = late arterial / cortico-medullary: bright cortex 170-260
HU, dark medulla 60-110 HU, aorta 250-400 HU; ``"portal"`` = portal-venous: liver 100-130 HU, cortex and
medulla closer; ``"late"`` = nephrographic: homogeneous kidney). One enhancement level per case moves all
contrast-dependent tissues together within their phase range (plus +-0.2 of the range per tissue). Texture
(smooth plane-wave field, physical, identical at every size), then Gaussian blur (scanner PSF in-plane,
0.42 x slice spacing along z, plus 0.4 voxel of partial-volume smoothing), then white Gaussian noise of the
case's std (per voxel at the rendered spacing).

Cost: rendering is linear in voxels; shapes are rasterised inside their bounding boxes in float32 chunks of
at most ~4 M voxels (a rotated ellipsoid is one rank-(3 + 2 x waves) matrix product per chunk). The volume
holds a uint8 tissue map, a uint8 structure map and a float32 image, blurred in place; the reorientation to
the on-disk axis codes copies the image once. Peak memory is about 10 bytes per voxel (512 x 512 x 300 ->
~0.8 GB; the 600-slice cap -> ~1.6 GB).

Example:
    >>> ph = generate_adult_phantom(KITS_PROFILE, seed=0, case_index=0, size="tiny")
    >>> ph.geometry.spacing[0] >= 0.6, int(ph.labels(KITS_LABELS).max())
    (True, 2)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from tlk_components.data.phantoms import (
    AMOS_LABELS,
    BTCV_LABELS,
    KITS_LABELS,
    ORGANS,
    Phantom,
    axis_box,
    check_axcodes,
    reorient_array,
)
from tlk_components.utils.errors import ConfigError

__all__ = [
    "AMOS_LABELS",
    "AMOS_PROFILE",
    "BTCV_LABELS",
    "DEMO_SPACING",
    "KITS_LABELS",
    "KITS_PROFILE",
    "PHASES",
    "SCAN_RANGES_MM",
    "SIZES",
    "TINY_SPACING",
    "AdultPhantom",
    "CaseGeometry",
    "DomainProfile",
    "Grid",
    "Shape",
    "case_grid",
    "draw_case_geometry",
    "generate_adult_phantom",
    "write_case",
]

#: Contrast phases a profile can draw.
PHASES: tuple[str, ...] = ("arterial", "portal", "late")
#: Scan-range type -> (min, max) scan length along z in mm.
SCAN_RANGES_MM: dict[str, tuple[float, float]] = {
    "kidney": (150.0, 250.0),
    "abdomen": (200.0, 320.0),
    "abdomen_pelvis": (350.0, 480.0),
    "chest_abdomen_pelvis": (500.0, 650.0),
}
#: Render sizes: "real" = 512 x 512 at the drawn spacing; "demo" and "tiny" = same geometry, coarse spacing.
SIZES: tuple[str, ...] = ("real", "demo", "tiny")
#: Default (x, y, z) spacing in mm of ``size="demo"`` (~68-111 voxels in-plane, ~30-130 slices).
DEMO_SPACING: tuple[float, float, float] = (4.5, 4.5, 5.0)
#: Default (x, y, z) spacing in mm of ``size="tiny"`` (~34-56 voxels in-plane, ~15-65 slices).
TINY_SPACING: tuple[float, float, float] = (9.0, 9.0, 10.0)
REAL_MATRIX = 512
_KIDNEY_MARGIN_MM = 10.0
_CHUNK_VOXELS = 4_000_000

# tissue id = index; 0 is the padding outside the reconstruction circle
_TISSUES: tuple[str, ...] = (
    "outside",
    "air",
    "fat",
    "soft",
    "muscle",
    "bone",
    "disc",
    "csf",
    "lung",
    "heart",
    "bowel",
    "colon",
    "gas",
    "table",
    "liver",
    "spleen",
    "kidney",
    "kidney_medulla",
    "tumour",
    "necrosis",
    "gallbladder",
    "stomach",
    "pancreas",
    "duodenum",
    "esophagus",
    "adrenal",
    "bladder",
    "prostate_uterus",
    "aorta",
    "ivc",
    "portal_vein",
)
_TID = {name: i for i, name in enumerate(_TISSUES)}
_SID = {name: i + 1 for i, name in enumerate(ORGANS)}

# HU ranges (lo, hi) of tissues that do not depend on contrast timing
_STATIC_HU: dict[str, tuple[float, float]] = {
    "outside": (-1024.0, -1024.0),
    "air": (-1000.0, -990.0),
    "fat": (-115.0, -85.0),
    "soft": (25.0, 45.0),  # non-fat visceral soft tissue, mixed with fat per case
    "muscle": (45.0, 60.0),
    "bone": (300.0, 550.0),
    "disc": (70.0, 100.0),
    "csf": (5.0, 20.0),
    "lung": (-880.0, -800.0),
    "bowel": (15.0, 45.0),
    "colon": (-150.0, 20.0),
    "gas": (-1000.0, -900.0),
    "table": (-500.0, -250.0),
    "necrosis": (10.0, 35.0),
    "gallbladder": (0.0, 20.0),
    "bladder": (0.0, 15.0),
    "esophagus": (35.0, 55.0),
}
# contrast-dependent HU ranges per phase (late arterial / cortico-medullary, portal-venous, nephrographic)
_PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "arterial": {
        "liver": (60.0, 85.0),
        "spleen": (90.0, 140.0),
        "kidney": (170.0, 260.0),
        "kidney_medulla": (60.0, 110.0),
        "tumour": (70.0, 150.0),
        "pancreas": (90.0, 130.0),
        "aorta": (250.0, 400.0),
        "ivc": (60.0, 110.0),
        "portal_vein": (110.0, 170.0),
        "heart": (150.0, 300.0),
        "adrenal": (50.0, 80.0),
        "stomach": (35.0, 60.0),
        "duodenum": (35.0, 60.0),
        "prostate_uterus": (45.0, 70.0),
    },
    "portal": {
        "liver": (100.0, 130.0),
        "spleen": (105.0, 130.0),
        "kidney": (160.0, 220.0),
        "kidney_medulla": (120.0, 190.0),
        "tumour": (80.0, 130.0),
        "pancreas": (90.0, 120.0),
        "aorta": (140.0, 200.0),
        "ivc": (120.0, 170.0),
        "portal_vein": (160.0, 210.0),
        "heart": (130.0, 180.0),
        "adrenal": (60.0, 90.0),
        "stomach": (40.0, 65.0),
        "duodenum": (40.0, 70.0),
        "prostate_uterus": (55.0, 85.0),
    },
    "late": {
        "liver": (90.0, 115.0),
        "spleen": (90.0, 115.0),
        "kidney": (150.0, 200.0),
        "kidney_medulla": (145.0, 200.0),
        "tumour": (60.0, 100.0),
        "pancreas": (70.0, 100.0),
        "aorta": (110.0, 150.0),
        "ivc": (110.0, 150.0),
        "portal_vein": (120.0, 160.0),
        "heart": (110.0, 150.0),
        "adrenal": (50.0, 75.0),
        "stomach": (35.0, 60.0),
        "duodenum": (35.0, 60.0),
        "prostate_uterus": (50.0, 75.0),
    },
}
# std (HU) of the smooth texture per tissue; default 6
_TEXTURE_STD: dict[str, float] = {
    "outside": 0.0,
    "air": 2.0,
    "soft": 25.0,
    "fat": 8.0,
    "bone": 120.0,
    "lung": 40.0,
    "bowel": 15.0,
    "colon": 80.0,
    "gas": 20.0,
    "table": 30.0,
    "tumour": 22.0,
    "necrosis": 10.0,
    "kidney_medulla": 10.0,
    "heart": 15.0,
}


def _check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> None:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ConfigError(f"{name}={value}: expected (min, max) with {lo} <= min <= max <= {hi}")


def _check_probs(name: str, probs: Mapping, allowed: tuple | None) -> None:
    if not probs or any(float(p) < 0 for p in probs.values()) or sum(float(p) for p in probs.values()) <= 0:
        raise ConfigError(f"{name}={dict(probs)}: expected a non-empty mapping of probabilities >= 0, sum > 0")
    if allowed is not None and set(probs) - set(allowed):
        raise ConfigError(f"{name}: unknown key(s) {sorted(set(probs) - set(allowed))}; expected keys of {allowed}")


@dataclass(frozen=True)
class DomainProfile:
    """Per-domain distributions from which every case of a simulated dataset is drawn.

    Args:
        name: domain name; it also seeds the draws (two profiles with one seed give different cases).
        phase_probs: contrast phase -> probability (keys of :data:`PHASES`; normalised).
        scan_range_probs: scan-range type -> probability (keys of :data:`SCAN_RANGES_MM`; normalised).
        inplane_spacing_mm: (min, max) in-plane spacing of the 512 x 512 real size, within [0.3, 1.2] mm; the
            reconstruction diameter is 512 x spacing.
        slice_spacing_probs: slice spacing (mm, in (0, 10]) -> probability.
        noise_std_hu: (min, max) std of the additive white noise in HU, >= 0.
        blur_inplane_mm: (min, max) in-plane Gaussian blur std in mm (scanner kernel), >= 0.
        tumours: (min, max) exophytic kidney tumours per case; each extra one above min with probability 0.25.
            Default (0, 0).
        tumour_radius_mm: (min, max) tumour radius (log-uniform), within [3, 80] mm. Default (7.5, 55).
        axcodes: on-disk orientation as nibabel axis codes ("RAS", "LPS", KiTS19's slices-first "IPL", ...).
        max_real_slices: cap on the slices of the real size (>= 16); a finer slice spacing is coarsened to the
            next listed value above ``scan length / cap``. Default 600 (~1.6 GB peak).
        visceral_fat: (min, max) visceral fat fraction mixed into the abdominal background, in [0, 1].

    Raises:
        ConfigError: any field out of its range (the message names the field).
    """

    name: str
    phase_probs: Mapping[str, float]
    scan_range_probs: Mapping[str, float]
    inplane_spacing_mm: tuple[float, float] = (0.6, 0.9)
    slice_spacing_probs: Mapping[float, float] = field(default_factory=lambda: {5.0: 1.0})
    noise_std_hu: tuple[float, float] = (8.0, 25.0)
    blur_inplane_mm: tuple[float, float] = (0.4, 1.0)
    tumours: tuple[int, int] = (0, 0)
    tumour_radius_mm: tuple[float, float] = (7.5, 55.0)
    axcodes: str = "RAS"
    max_real_slices: int = 600
    visceral_fat: tuple[float, float] = (0.3, 0.8)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"DomainProfile.name={self.name!r}: expected a non-empty string")
        _check_probs("DomainProfile.phase_probs", self.phase_probs, PHASES)
        _check_probs("DomainProfile.scan_range_probs", self.scan_range_probs, tuple(SCAN_RANGES_MM))
        _check_probs("DomainProfile.slice_spacing_probs", self.slice_spacing_probs, None)
        if any(not 0 < float(s) <= 10 for s in self.slice_spacing_probs):
            raise ConfigError(
                f"DomainProfile.slice_spacing_probs: spacings {list(self.slice_spacing_probs)} not in (0, 10] mm"
            )
        _check_range("DomainProfile.inplane_spacing_mm", self.inplane_spacing_mm, 0.3, 1.2)
        _check_range("DomainProfile.noise_std_hu", self.noise_std_hu, 0.0, 500.0)
        _check_range("DomainProfile.blur_inplane_mm", self.blur_inplane_mm, 0.0, 10.0)
        _check_range("DomainProfile.tumour_radius_mm", self.tumour_radius_mm, 3.0, 80.0)
        _check_range("DomainProfile.visceral_fat", self.visceral_fat, 0.0, 1.0)
        if len(self.tumours) != 2 or not 0 <= self.tumours[0] <= self.tumours[1] <= 6:
            raise ConfigError(f"DomainProfile.tumours={self.tumours}: expected (min, max) with 0 <= min <= max <= 6")
        if int(self.max_real_slices) < 16:
            raise ConfigError(f"DomainProfile.max_real_slices={self.max_real_slices}: expected >= 16")
        check_axcodes("DomainProfile.axcodes", self.axcodes)


#: AMOS22-like: portal-venous mostly (some arterial / late), many scanners (noise 8-30 HU, blur 0.4-1.1 mm),
#: abdomen or abdomen-pelvis range mostly, some chest-abdomen-pelvis; 0.6-0.9 mm in-plane, 1.25-5 mm slices
#: (5 mm most often); no tumours; stored "LPS" like the AMOS demo writer of this package.
AMOS_PROFILE = DomainProfile(
    name="amos",
    phase_probs={"portal": 0.75, "arterial": 0.1, "late": 0.15},
    scan_range_probs={"abdomen": 0.5, "abdomen_pelvis": 0.25, "chest_abdomen_pelvis": 0.2, "kidney": 0.05},
    inplane_spacing_mm=(0.6, 0.9),
    slice_spacing_probs={1.25: 0.1, 1.5: 0.05, 2.0: 0.1, 2.5: 0.1, 3.0: 0.15, 5.0: 0.5},
    noise_std_hu=(8.0, 30.0),
    blur_inplane_mm=(0.4, 1.1),
    tumours=(0, 0),
    axcodes="LPS",
)

#: KiTS19-like: late-arterial (cortico-medullary) phase mostly, kidney-centred range mostly, 0.6-0.98 mm
#: in-plane, 0.5-5 mm slices (3 mm most often), one or two tumours per case from 1.5 cm to kidney-replacing,
#: stored slices-first ("IPL") like KiTS19.
KITS_PROFILE = DomainProfile(
    name="kits",
    phase_probs={"arterial": 0.9, "portal": 0.1},
    scan_range_probs={"kidney": 0.75, "abdomen": 0.2, "chest_abdomen_pelvis": 0.05},
    inplane_spacing_mm=(0.6, 0.98),
    slice_spacing_probs={
        0.5: 0.04,
        0.8: 0.04,
        1.0: 0.07,
        1.25: 0.05,
        1.5: 0.05,
        2.0: 0.05,
        2.5: 0.1,
        3.0: 0.35,
        4.0: 0.05,
        5.0: 0.2,
    },
    noise_std_hu=(8.0, 22.0),
    blur_inplane_mm=(0.3, 0.9),
    tumours=(1, 2),
    tumour_radius_mm=(7.5, 55.0),
    axcodes="IPL",
)


@dataclass(frozen=True)
class Shape:
    """One painted primitive of a case, in world mm (see :class:`CaseGeometry`).

    Attributes:
        kind: "ellipsoid" (``center``, ``semi``, ``rotation``, smooth ``deform``) or "tube" (elliptic
            cross-section along z through ``path`` points ``(z, cx, cy, a, b)``, z increasing).
        tissue: tissue name (sets the HU).
        label: structure of :data:`ORGANS`; "" clears the label (unlabelled tissue); None keeps the label.
        only_on: paint only over these tissues (empty = anywhere inside the body).
    """

    kind: str
    tissue: str
    label: str | None = ""
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    semi: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    deform: float = 0.0
    waves: tuple[tuple[float, float, float, float], ...] = ()
    path: tuple[tuple[float, float, float, float, float], ...] = ()
    only_on: tuple[str, ...] = ()

    def z_extent(self) -> tuple[float, float]:
        """(lowest, highest) world z the shape can reach, in mm."""
        if self.kind == "tube":
            return min(p[0] for p in self.path), max(p[0] for p in self.path)
        reach = _reach(np.asarray(self.rotation).reshape(3, 3), np.asarray(self.semi), self.deform, len(self.waves))
        return self.center[2] - reach[2], self.center[2] + reach[2]


@dataclass(frozen=True)
class Grid:
    """A voxel grid of one case.

    Attributes:
        shape: (x, y, z) shape in RAS axis order.
        spacing: (x, y, z) spacing in mm.
        affine: 4x4 voxel -> world (RAS+ mm) matrix of the RAS-ordered array.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def world_to_voxel(self, point_mm: tuple[float, float, float]) -> np.ndarray:
        """Continuous RAS voxel index of a world point (mm)."""
        return (np.linalg.inv(self.affine) @ np.array([*point_mm, 1.0]))[:3]

    def disk_shape(self, axcodes: str) -> tuple[int, ...]:
        """Array shape once reoriented to ``axcodes`` (e.g. "IPL" puts the slices first)."""
        return tuple(self.shape[_ras_axis_of(axcodes, k)] for k in range(3))


def _ras_axis_of(axcodes: str, k: int) -> int:
    code = axcodes[k].upper()
    return {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]


@dataclass(frozen=True)
class CaseGeometry:
    """Everything drawn for one case (sizes in mm, world frame RAS+; see the module docstring for ranges).

    Attributes:
        domain: profile name.
        seed, case_index: the draw's identity.
        phase: contrast phase (:data:`PHASES`).
        scan_range: scan-range type (:data:`SCAN_RANGES_MM`).
        body_width_mm, body_depth_mm: body size at the kidneys (left-right, antero-posterior).
        body_center_mm: (x, y) of the body centre; the isocentre (FOV centre) is (0, 0).
        height_scale: cranio-caudal scale of the anatomy (0.9-1.1).
        fat_fraction, muscle_fraction: subcutaneous fat and muscle wall thickness relative to the body radius.
        body_exponent: superellipse exponent of the body outline (2.2-2.6).
        fov_mm: reconstruction circle diameter = side of the in-plane matrix (= 512 x in-plane spacing).
        z_range_mm: (bottom, top) of the scanned slab at the real size.
        spacing: real (x, y, z) spacing in mm.
        kidney_centers: "right_kidney"/"left_kidney" -> world centre (mm).
        kidney_size_mm: side -> (cranio-caudal, transverse, antero-posterior) full lengths (mm).
        tumours: (side, world centre, radius mm) per tumour.
        hu: tissue -> HU of this case.
        noise_std_hu: white noise std (HU).
        blur_mm: (x, y, z) Gaussian blur std (mm) of the real scan.
        texture_waves: (kx, ky, kz, phase) plane waves of the physical texture.
        table_y_mm: world y of the table top.
        rib_phase_mm: phase of the rib pattern along z.
        axcodes: on-disk orientation.
        shapes: painted primitives, in painting order.
    """

    domain: str
    seed: int
    case_index: int
    phase: str
    scan_range: str
    body_width_mm: float
    body_depth_mm: float
    body_center_mm: tuple[float, float]
    height_scale: float
    fat_fraction: float
    muscle_fraction: float
    body_exponent: float
    fov_mm: float
    z_range_mm: tuple[float, float]
    spacing: tuple[float, float, float]
    kidney_centers: dict[str, tuple[float, float, float]]
    kidney_size_mm: dict[str, tuple[float, float, float]]
    tumours: tuple[tuple[str, tuple[float, float, float], float], ...]
    hu: dict[str, float]
    noise_std_hu: float
    blur_mm: tuple[float, float, float]
    texture_waves: tuple[tuple[float, float, float, float], ...]
    table_y_mm: float
    rib_phase_mm: float
    axcodes: str
    shapes: tuple[Shape, ...]

    def grid(self, size: str = "demo", spacing: tuple[float, float, float] | None = None) -> Grid:
        """The voxel grid of this case at a size; see :func:`case_grid`."""
        return case_grid(self, size, spacing)

    def body_scale(self, z: np.ndarray) -> np.ndarray:
        """Relative body radius at world z (1 at the kidneys; wider over the pelvis, narrower over the chest)."""
        zs = np.array([-400.0, -260.0, -170.0, -90.0, 0.0, 100.0, 200.0, 330.0, 450.0]) * self.height_scale
        ss = np.array([0.92, 1.0, 1.04, 1.0, 1.0, 0.98, 0.95, 0.92, 0.9])
        return np.interp(np.asarray(z, dtype=float), zs, ss)


def _size_spacing(size: str, spacing: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    if size not in SIZES:
        raise ConfigError(f"size={size!r}: expected one of {SIZES}")
    if size == "real":
        if spacing is not None:
            raise ConfigError(
                "spacing: the real size uses the drawn per-case spacing; pass spacing only with demo/tiny"
            )
        return None
    sp = spacing if spacing is not None else (DEMO_SPACING if size == "demo" else TINY_SPACING)
    try:
        sp = tuple(float(s) for s in sp)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"spacing={spacing!r}: expected three spacings (x, y, z) in mm") from err
    if len(sp) != 3 or not all(0.2 <= s <= 30.0 for s in sp):
        raise ConfigError(f"spacing={spacing!r}: expected three spacings (x, y, z) within [0.2, 30] mm")
    return sp  # type: ignore[return-value]


def case_grid(geometry: CaseGeometry, size: str = "demo", spacing: tuple[float, float, float] | None = None) -> Grid:
    """The voxel grid of a case, without rendering it.

    ``"real"``: 512 x 512 in-plane at ``geometry.spacing`` over ``geometry.z_range_mm``. ``"demo"`` /
    ``"tiny"``: the same field of view (in-plane square of side ``fov_mm``, the same z slab, both centred the
    same) at ``spacing`` (default :data:`DEMO_SPACING` / :data:`TINY_SPACING`); the extent differs from the
    real one by less than half a voxel at each end.

    Args:
        geometry: from :func:`draw_case_geometry`.
        size: one of :data:`SIZES`.
        spacing: (x, y, z) mm for "demo"/"tiny" (each in [0.2, 30]); must be None for "real".

    Returns:
        :class:`Grid` (RAS axis order).

    Raises:
        ConfigError: unknown size, bad spacing, or a spacing given with ``size="real"``.
    """
    sp = _size_spacing(size, spacing)
    z0, z1 = geometry.z_range_mm
    if sp is None:
        sp = geometry.spacing
        shape = (REAL_MATRIX, REAL_MATRIX, int(round((z1 - z0) / sp[2])))
    else:
        n_xy = max(4, int(round(geometry.fov_mm / sp[0]))), max(4, int(round(geometry.fov_mm / sp[1])))
        shape = (n_xy[0], n_xy[1], max(4, int(round((z1 - z0) / sp[2]))))
    zc = 0.5 * (z0 + z1)
    origin = (
        -shape[0] * sp[0] / 2 + sp[0] / 2,
        -shape[1] * sp[1] / 2 + sp[1] / 2,
        zc - shape[2] * sp[2] / 2 + sp[2] / 2,
    )
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = origin
    return Grid(shape=shape, spacing=tuple(sp), affine=affine)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- drawing


def _rx(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=float)


def _ry(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=float)


def _rz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=float)


def _reach(rot: np.ndarray, semi: np.ndarray, deform: float, n_waves: int) -> np.ndarray:
    """Half extents along x, y, z of a rotated ellipsoid, grown for its deformation."""
    grow = math.sqrt(1.0 + deform * n_waves / math.sqrt(max(n_waves, 1) / 2.0)) if n_waves else 1.0
    return np.sqrt(((rot * semi[None, :]) ** 2).sum(axis=1)) * grow + 1e-6


def _pick(rng: np.random.Generator, probs: Mapping) -> object:
    keys = list(probs)
    p = np.array([float(probs[k]) for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> tuple:
    out = []
    for _ in range(n):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d) + 1e-12
        k = 2 * math.pi / rng.uniform(*wavelength)
        out.append((float(d[0] * k), float(d[1] * k), float(d[2] * k), float(rng.uniform(0, 2 * math.pi))))
    return tuple(out)


def _t3(v: np.ndarray | tuple) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _validate_case_args(
    profile: DomainProfile, seed: int, case_index: int, scan_range: str | None, phase: str | None
) -> None:
    if not isinstance(profile, DomainProfile):
        raise ConfigError(f"profile={profile!r}: expected a DomainProfile such as AMOS_PROFILE or KITS_PROFILE")
    for name, value in (("seed", seed), ("case_index", case_index)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name}={value!r}: expected an integer >= 0")
    if scan_range is not None and scan_range not in SCAN_RANGES_MM:
        raise ConfigError(f"scan_range={scan_range!r}: expected None or one of {tuple(SCAN_RANGES_MM)}")
    if phase is not None and phase not in PHASES:
        raise ConfigError(f"phase={phase!r}: expected None or one of {PHASES}")


def draw_case_geometry(
    profile: DomainProfile,
    seed: int = 0,
    case_index: int = 0,
    scan_range: str | None = None,
    phase: str | None = None,
) -> CaseGeometry:
    """Draw the patient, the organs and the scan of one case (no voxels; fast).

    Deterministic in (profile.name, seed, case_index); ``scan_range`` / ``phase`` override the drawn value
    without changing any other draw (same patient, other field of view or contrast timing).

    Args:
        profile: the domain's distributions (:data:`AMOS_PROFILE`, :data:`KITS_PROFILE`, or your own).
        seed: dataset seed, integer >= 0.
        case_index: case number, integer >= 0.
        scan_range: force a key of :data:`SCAN_RANGES_MM` (default: drawn from the profile).
        phase: force a key of :data:`PHASES` (default: drawn from the profile).

    Returns:
        :class:`CaseGeometry`.

    Raises:
        ConfigError: bad profile, negative/non-integer seed or case index, unknown scan range or phase.
    """
    _validate_case_args(profile, seed, case_index, scan_range, phase)
    rng = np.random.default_rng([int(seed), int(case_index), zlib.crc32(profile.name.encode()), 104729])
    drawn_phase = str(_pick(rng, profile.phase_probs))
    drawn_range = str(_pick(rng, profile.scan_range_probs))
    phase = phase or drawn_phase
    scan_range = scan_range or drawn_range

    # ---- patient
    width = float(rng.uniform(300.0, 380.0))
    depth = float(np.clip(width * rng.uniform(0.62, 0.78), 200.0, 280.0))
    sw, sd, sh = width / 340.0, depth / 240.0, float(rng.uniform(0.9, 1.1))
    ox, oy = float(rng.uniform(-15.0, 15.0)), float(rng.uniform(-30.0, 10.0))
    fat_mm = rng.uniform(10.0, 30.0)
    fat_f = float(fat_mm / (depth / 2))
    mus_f = float(rng.uniform(6.0, 12.0) / (depth / 2))
    expo = float(rng.uniform(2.2, 2.6))
    visceral = float(rng.uniform(*profile.visceral_fat))

    def P(x: float, y: float, z: float) -> np.ndarray:  # noqa: N802 - reference body (340 x 240 mm) -> world
        return np.array([ox + x * sw, oy + y * sd, z * sh])

    y_sp = -40.0  # vertebral body centre (reference y)
    shapes: list[Shape] = []

    def ell(tissue: str, label: str | None, c: np.ndarray, semi, rot=None, deform: float = 0.0, only_on=()) -> None:
        rot = np.eye(3) if rot is None else rot
        waves = _waves(rng, 3, (1.2 * float(np.mean(semi)), 3.0 * float(np.mean(semi)))) if deform > 0 else ()
        shapes.append(
            Shape(
                "ellipsoid",
                tissue,
                label,
                _t3(c),
                _t3(semi),
                tuple(float(v) for v in rot.ravel()),
                float(deform),
                waves,
                (),
                tuple(only_on),
            )
        )

    def tube(tissue: str, label: str | None, pts: list[tuple[float, float, float, float, float]], only_on=()) -> None:
        """pts in reference coordinates (z, x, y, a, b) -> world."""
        world = sorted((z * sh, ox + x * sw, oy + y * sd, a, b) for z, x, y, a, b in pts)
        shapes.append(
            Shape("tube", tissue, label, path=tuple(tuple(float(v) for v in p) for p in world), only_on=tuple(only_on))
        )

    def seg(tissue: str, label: str | None, p0: np.ndarray, p1: np.ndarray, radius: float, only_on=()) -> None:
        d = p1 - p0
        length = float(np.linalg.norm(d)) + 1e-6
        u = d / length
        a = np.cross(u, [0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.cross(u, [1.0, 0.0, 0.0])
        a /= np.linalg.norm(a)
        rot = np.stack([u, a, np.cross(u, a)], axis=1)
        ell(tissue, label, (p0 + p1) / 2, (length / 2 + radius, radius, radius), rot, only_on=only_on)

    jit = lambda: float(rng.uniform(0.88, 1.12))  # noqa: E731 - organ size jitter

    # lungs and heart (chest), ribs are drawn by the renderer
    for side in (1.0, -1.0):
        ell(
            "lung",
            "",
            P(side * 72, -5, 220 - (side < 0) * 8),
            (62 * sw, 82 * sd, 125 * sh),
            deform=0.06,
            only_on=("soft",),
        )
    ell("heart", "", P(-22, 30, 185), (62 * jit(), 50 * jit(), 55 * jit()), _rz(30), deform=0.05)
    # back muscles, spine, pelvis
    for side in (1.0, -1.0):
        tube("muscle", "", [(460, side * 35, -80, 24, 22), (0, side * 38, -82, 30, 26), (-170, side * 30, -85, 26, 20)])
        ell("muscle", "", P(side * 40, -36, -75), (19 * sw, 17 * sd, 105 * sh), _ry(side * 8), deform=0.05)
        ell("muscle", "", P(side * 85, -80, -205), (55 * sw, 42 * sd, 70 * sh), deform=0.05)
        ell("bone", "", P(side * 95, -15, -125), (26 * sw, 62 * sd, 50 * sh), _rz(-side * 30))
        ell("muscle", "", P(side * 80, -3, -118), (24 * sw, 55 * sd, 46 * sh), _rz(-side * 30))
        ell("bone", "", P(side * 92, -5, -240), (24, 24, 24))
        tube("bone", "", [(-240, side * 100, -5, 15, 15), (-460, side * 118, 0, 16, 16)])
        ell("bone", "", P(side * 28, 52, -252), (22 * sw, 11, 17 * sh), _rz(side * 20))
    top = 460.0
    tube("bone", "", [(top, 0, y_sp - 35, 20, 14), (-120, 0, y_sp - 35, 24, 15)])
    tube("bone", "", [(top, 0, y_sp - 58, 5, 13), (-120, 0, y_sp - 58, 5, 14)])
    tube("bone", "", [(top, 0, y_sp, 17, 14), (60, 0, y_sp, 20, 15.5), (0, 0, y_sp, 23, 17), (-124, 0, y_sp, 24, 17)])
    for k in range(-4, 15):
        zk = k * 31.0
        a = float(np.interp(zk, [-124, 0, 60, 460], [24, 23, 20, 17]))
        ell("disc", "", P(0, y_sp, zk), (a * sw, 15 * sd, 3.5 * sh))
    ell("bone", "", P(0, y_sp - 18, -168), (48 * sw, 22 * sd, 52 * sh), _rx(-30))
    tube("csf", "", [(top, 0, y_sp - 28, 8, 7), (-150, 0, y_sp - 30, 9, 8)])

    # bowel: small-bowel loops and colon (distractors), some with gas
    for _ in range(int(rng.integers(18, 28))):
        c = P(rng.uniform(-85, 85), rng.uniform(-10, 80), rng.uniform(-200, 20))
        s = rng.uniform(12, 22, size=3)
        ell("bowel", "", c, s, _rz(rng.uniform(0, 180)) @ _rx(rng.uniform(-40, 40)), deform=0.1, only_on=("soft",))
        if rng.random() < 0.3:
            ell("gas", "", c + np.array([0, s[1] * 0.4, 0]), s * 0.4, only_on=("bowel",))
    colon = [
        [(-110, 100, -5, 24, 24), (30, 105, -5, 26, 26)],
        [(-100, -105, -20, 22, 22), (60, -100, -25, 24, 24)],
        [(-260, 0, y_sp + 5, 18, 18), (-170, 5, y_sp + 15, 22, 22)],
    ]
    for pts in colon:
        tube("colon", "", pts, only_on=("soft", "bowel"))
    ell("colon", "", P(0, 68, 15), (110 * sw, 22, 22), _ry(rng.uniform(-8, 8)), deform=0.08, only_on=("soft", "bowel"))
    ell("gas", "", P(0, 78, 18), (80 * sw, 9, 10), only_on=("colon",))

    # solid organs (painted before the perirenal capsules, which carve a fat rim around the kidneys)
    ell("liver", "liver", P(62, 8, 50), (65 * jit(), 72 * jit(), 72 * jit()), _rz(rng.uniform(0, 15)), deform=0.12)
    ell("liver", "liver", P(-15, 45, 72), (52 * jit(), 30 * jit(), 38 * jit()), _rz(-10), deform=0.1)
    ell("gallbladder", "gallbladder", P(55, 52, 18), (15 * jit(), 16 * jit(), 38 * jit()), _rx(30), deform=0.08)
    ell("spleen", "spleen", P(-98, -32, 62), (22 * jit(), 55 * jit(), 52 * jit()), _rz(35), deform=0.1)
    ell("stomach", "stomach", P(-58, 12, 88), (40 * jit(), 38 * jit(), 42 * jit()), deform=0.1)
    ell("stomach", "stomach", P(-22, 52, 40), (48 * jit(), 26 * jit(), 32 * jit()), _rz(-30), deform=0.1)
    if rng.random() < 0.6:
        ell("gas", None, P(-52, 35, 100), (20, 14, 16), only_on=("stomach",))
    ell(
        "pancreas",
        "pancreas",
        P(-15, y_sp + 58, 18),
        (68 * jit(), 13 * jit(), 12 * jit()),
        _rz(15) @ _ry(15),
        deform=0.15,
    )
    ell("duodenum", "duodenum", P(34, 42, 35), (18, 12, 12), _rz(30), deform=0.08)
    ell("duodenum", "duodenum", P(46, y_sp + 52, -5), (14, 14, 34 * jit()), deform=0.08)
    ell("duodenum", "duodenum", P(5, y_sp + 52, -42), (45 * jit(), 12, 12), deform=0.08)
    fill = float(rng.uniform(0.5, 1.2))
    ell("bladder", "bladder", P(0, 38, -218), (40 * fill, 32 * fill, 30 * fill), deform=0.08)
    if rng.random() < 0.5:
        ell("prostate_uterus", "prostate_uterus", P(0, 10, -245), (20 * jit(), 15 * jit(), 18 * jit()), deform=0.05)
    else:
        ell(
            "prostate_uterus",
            "prostate_uterus",
            P(0, 8, -190),
            (32 * jit(), 24 * jit(), 34 * jit()),
            _rx(25),
            deform=0.08,
        )

    # kidneys (world): centres, sizes, orientation
    z_left = float(rng.uniform(-10.0, 20.0)) * sh
    z_right = z_left - float(rng.uniform(10.0, 20.0)) * sh
    kid: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
    for name, side, zc in (("right_kidney", 1.0, z_right), ("left_kidney", -1.0, z_left)):
        c = np.array([ox + side * rng.uniform(50.0, 80.0) * sw, oy + (y_sp + rng.uniform(-12.0, 4.0)) * sd, zc])
        semi = np.array([30.0, 20.0, 55.0]) * rng.uniform(0.85, 1.15, size=3)  # transverse, AP, cranio-caudal
        rot = _rx(rng.uniform(5, 20)) @ _ry(-side * rng.uniform(5, 20)) @ _rz(-side * rng.uniform(20, 45))
        kid[name] = (c, semi, rot, side)
    capsule = float(rng.uniform(6.0, 18.0))
    med_scale = float(rng.uniform(0.55, 0.7))
    ivc_xy = (22.0, y_sp + 30.0)
    for c, s, rot, _side in kid.values():
        ell(
            "fat",
            "",
            c,
            s + capsule,
            rot,
            deform=0.05,
            only_on=("soft", "liver", "spleen", "bowel", "colon", "gas", "muscle", "duodenum", "pancreas"),
        )
    for c, s, rot, side in kid.values():  # renal veins, hilum -> IVC (under the kidney paint)
        hil = c + rot @ np.array([-side * s[0] * 0.9, 0.0, 0.0])
        seg("ivc", "", hil, np.array([ox + ivc_xy[0] * sw, oy + ivc_xy[1] * sd, hil[2]]), 5.0)
    for name, (c, s, rot, side) in kid.items():
        ell("kidney", name, c, s, rot, deform=0.06)
        ell("kidney_medulla", name, c, s * med_scale, rot, deform=0.05, only_on=("kidney",))
        ell("fat", "", c + rot @ np.array([-side * s[0] * 0.95, 0.0, 0.0]), s * np.array([0.55, 0.45, 0.35]), rot)
    # tumours
    tumours = []
    t_lo, t_hi = profile.tumours
    n_tum = t_lo + int(rng.binomial(t_hi - t_lo, 0.25)) if t_hi > 0 else 0
    for t in range(n_tum):
        name = ("right_kidney", "left_kidney")[int(rng.integers(0, 2)) if t == 0 else t % 2]
        c, s, rot, side = kid[name]
        radius = float(math.exp(rng.uniform(*np.log(profile.tumour_radius_mm))))
        theta, phi = rng.uniform(-0.6, 0.6) * math.pi, rng.uniform(-0.4, 0.4) * math.pi
        local = np.array([side * math.cos(theta) * math.cos(phi), math.sin(theta) * math.cos(phi), math.sin(phi)])
        depth_f = rng.uniform(0.0, 0.5) if radius > 35 else rng.uniform(0.55, 1.0)
        tc = c + rot @ (local * s * depth_f)
        ell(
            "tumour",
            name + "_tumour",
            tc,
            radius * rng.uniform(0.85, 1.15, size=3),
            _rz(rng.uniform(0, 180)),
            deform=0.1,
        )
        if radius > 25:
            ell("necrosis", name + "_tumour", tc, np.full(3, radius * 0.45), deform=0.15, only_on=("tumour",))
        tumours.append((name, _t3(tc), radius))

    # small structures and vessels on top
    for name, side in (("right_adrenal", 1.0), ("left_adrenal", -1.0)):
        c, s, rot, _ = kid[name.replace("adrenal", "kidney")]
        upper = c[2] + float(_reach(rot, s, 0, 0)[2])
        ell(
            "adrenal",
            name,
            np.array([ox + side * 34 * sw, oy + (y_sp + 8) * sd, upper + 12]),
            (5, 14, 17),
            _rz(-side * 25),
            deform=0.08,
        )
    pv0, pv1 = P(5, y_sp + 48, 20), P(48, y_sp + 62, 58)
    seg("portal_vein", "portal_vein", pv0, pv1, 7.5)
    tube(
        "esophagus",
        "esophagus",
        [(top, -5, y_sp + 28, 9, 8), (150, -10, y_sp + 33, 9, 8), (100, -28, y_sp + 48, 10, 9)],
    )
    r_ao = float(rng.uniform(11.0, 12.0))
    ao = rng.uniform(-3, 3, size=2)
    tube(
        "aorta",
        "aorta",
        [
            (top, -22 + ao[0], y_sp + 22, r_ao, r_ao),
            (100, -12 + ao[0], y_sp + 28 + ao[1], r_ao, r_ao),
            (-80, -8, y_sp + 30, r_ao - 1, r_ao - 1),
        ],
    )
    tube("ivc", "ivc", [(115, 20, y_sp + 40, 13, 10), (40, ivc_xy[0], ivc_xy[1], 13, 10), (-100, 15, y_sp + 28, 12, 9)])
    for side in (1.0, -1.0):
        tube(
            "aorta",
            "",
            [(-80, side * 5, y_sp + 30, 6, 6), (-200, side * 60, y_sp + 45, 6, 6), (-250, side * 75, 25, 6, 6)],
        )
        tube(
            "ivc",
            "",
            [(-100, side * 5 + 12, y_sp + 20, 8, 7), (-200, side * 55, y_sp + 35, 8, 7), (-250, side * 72, 15, 8, 7)],
        )

    # ---- scan: in-plane FOV and spacing, scan range, slice spacing
    lo_sp, hi_sp = profile.inplane_spacing_mm
    fov = float(
        np.clip(
            round((width * 1.04 + rng.uniform(-20.0, 90.0)) / 10.0) * 10.0, REAL_MATRIX * lo_sp, REAL_MATRIX * hi_sp
        )
    )
    sp_xy = fov / REAL_MATRIX
    lateral = max(abs(c[0] - ox) + float(_reach(rot, s, 0, 0)[0]) for c, s, rot, _ in kid.values())
    if abs(ox) + lateral > fov / 2 - 5:  # keep both kidneys inside the reconstruction circle's square
        ox_new = math.copysign(max(0.0, fov / 2 - 5 - lateral), ox)
        shapes = [_shift_shape(sh_, ox_new - ox) for sh_ in shapes]
        kid = {k: (v[0] + np.array([ox_new - ox, 0, 0]), v[1], v[2], v[3]) for k, v in kid.items()}
        tumours = [(n, _t3(np.array(c) + np.array([ox_new - ox, 0, 0])), r) for n, c, r in tumours]
        ox = ox_new
    k_lo = min(s_.z_extent()[0] for s_ in shapes if s_.label and "kidney" in s_.label)
    k_hi = max(s_.z_extent()[1] for s_ in shapes if s_.label and "kidney" in s_.label)
    length = float(rng.uniform(*SCAN_RANGES_MM[scan_range]))
    u_top, u_mid = float(rng.uniform(0, 1)), float(rng.uniform(-1, 1))
    if scan_range == "kidney":
        length = max(length, k_hi - k_lo + 2 * _KIDNEY_MARGIN_MM)
        z_top = 0.5 * (k_lo + k_hi) + 20.0 * u_mid + length / 2
    elif scan_range == "chest_abdomen_pelvis":
        z_top = (330.0 + 40.0 * u_top - 10.0) * sh
    else:
        z_top = (105.0 + 50.0 * u_top - 10.0) * sh
    z_top = max(z_top, k_hi + _KIDNEY_MARGIN_MM)
    z_top = min(z_top, k_lo - _KIDNEY_MARGIN_MM + length)
    choices = sorted(float(v) for v in profile.slice_spacing_probs)
    dz = float(_pick(rng, {float(k): v for k, v in profile.slice_spacing_probs.items()}))
    if length / dz > profile.max_real_slices:
        dz = next((v for v in choices if length / v <= profile.max_real_slices), length / profile.max_real_slices)
    n_z = max(4, int(math.ceil(length / dz)))
    z_range = (z_top - n_z * dz, z_top)

    # ---- appearance
    u = float(rng.uniform(0, 1))
    hu = {}
    for t in _TISSUES:
        lo, hi = _PHASE_HU[phase].get(t, _STATIC_HU.get(t, (0.0, 0.0)))
        hu[t] = (
            float(lo + (hi - lo) * np.clip(u + rng.uniform(-0.2, 0.2), 0, 1))
            if t in _PHASE_HU[phase]
            else float(rng.uniform(lo, hi))
        )
    hu["soft"] = (1 - visceral) * hu["soft"] + visceral * hu["fat"]
    noise = float(rng.uniform(*profile.noise_std_hu))
    b_xy = float(rng.uniform(*profile.blur_inplane_mm))
    tex = _waves(rng, 8, (6.0, 30.0))
    table_y = oy - depth / 2 * 1.0 - float(rng.uniform(2.0, 10.0))
    rib_phase = float(rng.uniform(0, 31.0))

    return CaseGeometry(
        domain=profile.name,
        seed=int(seed),
        case_index=int(case_index),
        phase=phase,
        scan_range=scan_range,
        body_width_mm=width,
        body_depth_mm=depth,
        body_center_mm=(ox, oy),
        height_scale=sh,
        fat_fraction=fat_f,
        muscle_fraction=mus_f,
        body_exponent=expo,
        fov_mm=fov,
        z_range_mm=(float(z_range[0]), float(z_range[1])),
        spacing=(sp_xy, sp_xy, dz),
        kidney_centers={k: _t3(v[0]) for k, v in kid.items()},
        kidney_size_mm={k: (2 * float(v[1][2]), 2 * float(v[1][0]), 2 * float(v[1][1])) for k, v in kid.items()},
        tumours=tuple(tumours),
        hu=hu,
        noise_std_hu=noise,
        blur_mm=(b_xy, b_xy, 0.42 * dz),
        texture_waves=tex,
        table_y_mm=float(table_y),
        rib_phase_mm=rib_phase,
        axcodes=profile.axcodes,
        shapes=tuple(shapes),
    )


def _shift_shape(shape: Shape, dx: float) -> Shape:
    if shape.kind == "tube":
        path = tuple((z, cx + dx, cy, a, b) for z, cx, cy, a, b in shape.path)
        return Shape(shape.kind, shape.tissue, shape.label, path=path, only_on=shape.only_on)
    c = (shape.center[0] + dx, shape.center[1], shape.center[2])
    return Shape(
        shape.kind,
        shape.tissue,
        shape.label,
        c,
        shape.semi,
        shape.rotation,
        shape.deform,
        shape.waves,
        (),
        shape.only_on,
    )


# ----------------------------------------------------------------------------------------------- rendering


class _Renderer:
    """Paints a :class:`CaseGeometry` on one grid (RAS order): uint8 tissue and structure maps."""

    def __init__(self, geo: CaseGeometry, grid: Grid) -> None:
        self.geo = geo
        self.grid = grid
        sp = np.asarray(grid.spacing, dtype=float)
        self.axes = [grid.affine[i, 3] + np.arange(grid.shape[i]) * sp[i] for i in range(3)]
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self.organs = np.zeros(grid.shape, dtype=np.uint8)
        ox, oy = geo.body_center_mm
        x = (self.axes[0][:, None] - ox).astype(np.float32)
        y = (self.axes[1][None, :] - oy).astype(np.float32)
        p = geo.body_exponent
        r = (np.abs(x / (geo.body_width_mm / 2)) ** p + np.abs(y / (geo.body_depth_mm / 2)) ** p) ** (1.0 / p)
        self.recon = (self.axes[0][:, None] ** 2 + self.axes[1][None, :] ** 2) < (geo.fov_mm / 2) ** 2
        self.body_r = np.where(self.recon, r, np.inf).astype(np.float32)
        self.theta = np.abs(np.arctan2(x, -y)).astype(np.float32)  # 0 = posterior midline, pi = anterior
        self.s = geo.body_scale(self.axes[2]).astype(np.float32)
        self.limit = self.s * np.float32(1.0 - geo.fat_fraction)  # shapes stay inside the subcutaneous fat

    def _x_chunks(self):
        nx, ny, nz = self.grid.shape
        step = max(1, _CHUNK_VOXELS // (ny * nz))
        for i in range(0, nx, step):
            yield slice(i, min(nx, i + step))

    def body(self) -> None:
        g = self.geo
        f, m = g.fat_fraction, g.muscle_fraction
        ty = g.table_y_mm
        yy = self.axes[1][None, :] + 0 * self.axes[0][:, None]
        xx = self.axes[0][:, None] + 0 * self.axes[1][None, :]
        table = (
            self.recon & (yy < ty - 0.0004 * xx**2) & (yy > ty - 8.0 - 0.0004 * xx**2) & (np.abs(xx) < 0.45 * g.fov_mm)
        )
        for sl in self._x_chunks():
            r = self.body_r[sl][:, :, None]
            s = self.s[None, None, :]
            t = self.tissue[sl]
            t[...] = np.where(self.recon[sl], _TID["air"], _TID["outside"])[:, :, None]
            t[np.broadcast_to(table[sl][:, :, None], t.shape)] = _TID["table"]
            t[r < s] = _TID["fat"]
            t[r < s * (1 - f)] = _TID["muscle"]
            t[r < s * (1 - f - m)] = _TID["soft"]

    def ribs(self) -> None:
        g = self.geo
        inner = 1.0 - g.fat_fraction - g.muscle_fraction
        smin, smax = float(self.s.min()), float(self.s.max())
        th = self.theta
        cand = (th > 0.3) & (th < 0.85 * math.pi) & (self.body_r > smin * (inner - 0.05)) & (self.body_r < smax * inner)
        ix, iy = np.nonzero(cand)
        if ix.size == 0:
            return
        z = self.axes[2][None, :].astype(np.float32)
        rr = self.body_r[ix, iy][:, None] / self.s[None, :]
        tt = th[ix, iy][:, None] / np.float32(math.pi)
        z_low = (-20.0 + 80.0 * tt**1.5) * g.height_scale
        band = np.mod((z + 50.0 * tt * g.height_scale + g.rib_phase_mm) / (31.0 * g.height_scale), 1.0) < 0.3
        hit = (rr > inner - 0.05) & (rr < inner) & (z > z_low) & band
        sub = self.tissue[ix, iy, :]
        hit &= (sub == _TID["soft"]) | (sub == _TID["muscle"])
        sub[hit] = _TID["bone"]
        self.tissue[ix, iy, :] = sub

    def _box(self, center: np.ndarray, reach: np.ndarray) -> tuple[slice, ...] | None:
        return axis_box(self.axes, center, reach)

    def _apply(self, box: tuple[slice, ...], mask: np.ndarray, shape: Shape) -> None:
        mask &= self.body_r[box[0], box[1]][:, :, None] < self.limit[box[2]][None, None, :]
        t = self.tissue[box]
        if shape.only_on:
            allowed = np.zeros(len(_TISSUES), dtype=bool)
            allowed[[_TID[n] for n in shape.only_on]] = True
            mask &= allowed[t]
        np.copyto(t, np.uint8(_TID[shape.tissue]), where=mask)
        if shape.label is not None:
            np.copyto(self.organs[box], np.uint8(_SID[shape.label] if shape.label else 0), where=mask)

    def ellipsoid(self, shape: Shape) -> None:
        c = np.asarray(shape.center)
        semi = np.asarray(shape.semi)
        rot = np.asarray(shape.rotation).reshape(3, 3)
        box = self._box(c, _reach(rot, semi, shape.deform, len(shape.waves)))
        if box is None:
            return
        a = rot @ np.diag(1.0 / semi**2) @ rot.T
        dx = (self.axes[0][box[0]] - c[0])[:, None]
        dy = (self.axes[1][box[1]] - c[1])[None, :]
        dz = self.axes[2][box[2]] - c[2]
        cols = [
            a[0, 0] * dx**2 + a[1, 1] * dy**2 + 2 * a[0, 1] * dx * dy,
            np.ones_like(dx * dy),
            a[0, 2] * dx + a[1, 2] * dy,
        ]
        rows = [np.ones_like(dz), a[2, 2] * dz**2, 2 * dz]
        amp = shape.deform / math.sqrt(max(len(shape.waves), 1) / 2.0)
        for kx, ky, kz, ph in shape.waves:
            arg = kx * dx + ky * dy + ph
            cols += [np.cos(arg), np.sin(arg)]
            rows += [amp * np.cos(kz * dz), -amp * np.sin(kz * dz)]
        bx, by = cols[0].shape
        u = np.stack([np.broadcast_to(col, (bx, by)).ravel() for col in cols], axis=1).astype(np.float32)
        v = np.stack(rows, axis=0).astype(np.float32)
        nz = v.shape[1]
        step = max(1, _CHUNK_VOXELS // (bx * by))
        for k0 in range(0, nz, step):
            k1 = min(nz, k0 + step)
            mask = (u @ v[:, k0:k1] < 1.0).reshape(bx, by, k1 - k0)
            sub = (box[0], box[1], slice(box[2].start + k0, box[2].start + k1))
            self._apply(sub, mask, shape)

    def tube(self, shape: Shape) -> None:
        path = np.asarray(shape.path, dtype=float)
        z = self.axes[2]
        k = np.nonzero((z >= path[0, 0]) & (z <= path[-1, 0]))[0]
        if k.size == 0:
            return
        zs = z[k]
        cx, cy, a, b = (np.interp(zs, path[:, 0], path[:, i]) for i in (1, 2, 3, 4))
        box = self._box(
            np.array([0.5 * ((cx - a).min() + (cx + a).max()), 0.5 * ((cy - b).min() + (cy + b).max()), 0.0]),
            np.array([0.5 * ((cx + a).max() - (cx - a).min()), 0.5 * ((cy + b).max() - (cy - b).min()), np.inf]),
        )
        if box is None:
            return
        x = self.axes[0][box[0]][:, None, None]
        y = self.axes[1][box[1]][None, :, None]
        bx, by = x.shape[0], y.shape[1]
        step = max(1, _CHUNK_VOXELS // (bx * by))
        for j0 in range(0, k.size, step):
            j = slice(j0, min(k.size, j0 + step))
            mask = ((x - cx[j]) / a[j]) ** 2 + ((y - cy[j]) / b[j]) ** 2 < 1.0
            self._apply((box[0], box[1], slice(int(k[j][0]), int(k[j][-1]) + 1)), mask, shape)

    def paint_all(self) -> None:
        self.body()
        self.ribs()
        for shape in self.geo.shapes:
            (self.ellipsoid if shape.kind == "ellipsoid" else self.tube)(shape)

    def image(self, rng: np.random.Generator) -> np.ndarray:
        """HU image (float32, RAS): tissue HU + texture -> blur -> noise; -1024 outside the circle."""
        g = self.geo
        hu = np.array([g.hu[t] for t in _TISSUES], dtype=np.float32)
        tex_std = np.array([_TEXTURE_STD.get(t, 6.0) for t in _TISSUES], dtype=np.float32)
        kw = np.asarray(g.texture_waves, dtype=float)
        norm = 1.0 / math.sqrt(len(kw) / 2.0)
        mz = np.concatenate([np.cos(np.outer(kw[:, 2], self.axes[2])), -np.sin(np.outer(kw[:, 2], self.axes[2]))])
        mz = (mz * norm).astype(np.float32)
        out = np.empty(self.grid.shape, dtype=np.float32)
        for sl in self._x_chunks():
            x = self.axes[0][sl][:, None, None]
            y = self.axes[1][None, :, None]
            arg = kw[:, 0][None, None, :] * x + kw[:, 1][None, None, :] * y + kw[:, 3][None, None, :]
            mxy = np.concatenate([np.cos(arg), np.sin(arg)], axis=2).reshape(-1, 2 * len(kw)).astype(np.float32)
            tex = (mxy @ mz).reshape(out[sl].shape)
            t = self.tissue[sl]
            out[sl] = hu[t] + tex_std[t] * tex
        sp = self.grid.spacing
        for axis in range(3):
            sigma = math.sqrt(g.blur_mm[axis] ** 2 + (0.4 * sp[axis]) ** 2) / sp[axis]
            if sigma > 0.2:
                ndimage.gaussian_filter1d(out, sigma, axis=axis, output=out, mode="nearest", truncate=3.0)
        for sl in self._x_chunks():
            chunk = out[sl]
            if g.noise_std_hu > 0:
                chunk += np.float32(g.noise_std_hu) * rng.standard_normal(chunk.shape, dtype=np.float32)
            chunk[np.broadcast_to(~self.recon[sl][:, :, None], chunk.shape)] = g.hu["outside"]
        return out


@dataclass
class AdultPhantom(Phantom):
    """One rendered adult case (a :class:`~tlk_components.data.phantoms.Phantom` plus its geometry).

    Attributes:
        image: float32 HU, in ``geometry.axcodes`` orientation (shape as stored on disk).
        organs: uint8 structure ids (:data:`ORGANS` index + 1; 0 = none).
        affine: 4x4 voxel -> RAS+ mm of the on-disk array.
        spacing: spacing along the on-disk axes (mm).
        axcodes: on-disk axis codes.
        geometry: the drawn :class:`CaseGeometry` (identical for every size of the case).
        size: "real", "demo" or "tiny".
    """

    geometry: CaseGeometry | None = None
    size: str = "demo"


def generate_adult_phantom(
    profile: DomainProfile,
    seed: int = 0,
    case_index: int = 0,
    size: str = "demo",
    spacing: tuple[float, float, float] | None = None,
    scan_range: str | None = None,
    phase: str | None = None,
) -> AdultPhantom:
    """Draw (:func:`draw_case_geometry`) and render one adult abdominal CT case.

    The same arguments always give the same arrays; the sizes of one case share the geometry (the noise
    realisation differs per size).

    Args:
        profile: :data:`AMOS_PROFILE`, :data:`KITS_PROFILE` or your own :class:`DomainProfile`.
        seed: dataset seed, integer >= 0.
        case_index: case number, integer >= 0.
        size: "real" (512 x 512 in-plane at the drawn spacing, typically 100-600 slices, ~10 bytes/voxel
            peak), "demo" (default; :data:`DEMO_SPACING`) or "tiny" (:data:`TINY_SPACING`).
        spacing: (x, y, z) mm replacing the demo/tiny default (each in [0.2, 30]); not allowed with "real".
        scan_range: force a scan-range type (default: drawn).
        phase: force a contrast phase (default: drawn).

    Returns:
        :class:`AdultPhantom` in ``profile.axcodes`` orientation.

    Raises:
        ConfigError: bad profile, seed, case index, size, spacing, scan range or phase (the message names it).
    """
    _validate_case_args(profile, seed, case_index, scan_range, phase)
    _size_spacing(size, spacing)
    geo = draw_case_geometry(profile, seed, case_index, scan_range=scan_range, phase=phase)
    grid = case_grid(geo, size, spacing)
    ren = _Renderer(geo, grid)
    ren.paint_all()
    rng = np.random.default_rng(
        [int(seed), int(case_index), zlib.crc32(profile.name.encode()), SIZES.index(size), 31337]
    )
    image = ren.image(rng)
    organs = ren.organs
    del ren
    image, new_affine = reorient_array(image, grid.affine, "RAS", geo.axcodes)
    organs, _ = reorient_array(organs, grid.affine, "RAS", geo.axcodes)
    zooms = tuple(float(v) for v in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    return AdultPhantom(
        image=image,
        organs=organs,
        affine=new_affine,
        spacing=zooms,
        axcodes=geo.axcodes,
        geometry=geo,
        size=size,  # type: ignore[arg-type]
    )


def write_case(
    path_image: str | os.PathLike,
    path_label: str | os.PathLike | None,
    case: Phantom,
    labels: Mapping[str, int] = AMOS_LABELS,
    dtype: type = np.int16,
) -> tuple[Path, Path | None]:
    """Write a case's image (default int16 HU) and label map (uint8) as NIfTI-1 files with its affine.

    Args:
        path_image: ``.nii`` or ``.nii.gz`` destination of the image.
        path_label: destination of the label map, or None to skip it (e.g. an unlabelled test case).
        case: from :func:`generate_adult_phantom` (or any :class:`~tlk_components.data.phantoms.Phantom`).
        labels: structure name -> label value, e.g. :data:`AMOS_LABELS` or :data:`KITS_LABELS`.
        dtype: image dtype on disk (int16 default; float32 keeps the exact values).

    Returns:
        (image path, label path or None).

    Raises:
        ConfigError: ``labels`` names an unknown structure.
    """
    from tlk_components.data.nifti_checks import save_nifti

    label_img = case.label_nifti(labels) if path_label is not None else None
    p_img = save_nifti(case.image_nifti(dtype), path_image)
    p_lab = save_nifti(label_img, path_label) if label_img is not None and path_label is not None else None
    return p_img, p_lab
