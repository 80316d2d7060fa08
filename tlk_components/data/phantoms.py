# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Deterministic abdominal CT phantoms (3-D, Hounsfield-like intensities) for demos and tests.

A phantom is drawn in patient (RAS+) millimetre coordinates over a fixed field of view, so that two styles
with different voxel spacings show the same anatomy at the same physical size. It holds a body outline with
subcutaneous fat, spine, paraspinal and psoas muscles, bowel loops, and the organs of the BTCV/AMOS label
sets: liver, spleen, both kidneys (cortex, medulla, hilum with sinus fat, perirenal fat), gallbladder,
stomach, pancreas, duodenum, aorta, inferior vena cava, portal vein, oesophagus, both adrenal glands,
bladder and prostate/uterus, plus optional exophytic kidney tumours.

Every visual property that differs between public datasets (contrast phase through the organ HU values,
noise, blur, voxel spacing, intensity scale/offset as from a different reconstruction, on-disk orientation,
tumours, shape variability) is a field of :class:`PhantomStyle`. Construction order, as in CT calibration
phantoms: tissue texture first, then the scanner's blur, then noise; kidneys are bean-shaped with a hilum and
perirenal fat, their size varies by +-15 % and their long axis is tilted 5-25 degrees.

Example:
    >>> ph = generate_phantom(PhantomStyle(), seed=0, case_index=0)
    >>> ph.image.shape, ph.labels(BTCV_LABELS).max()
    ((64, 64, 40), 13)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage

from tlk_components.utils.errors import ConfigError

__all__ = [
    "AMOS_LABELS",
    "BTCV_LABELS",
    "DEFAULT_HU",
    "FOV_MM",
    "KITS_LABELS",
    "ORGANS",
    "Phantom",
    "axis_box",
    "check_axcodes",
    "PhantomStyle",
    "generate_phantom",
    "reorient_array",
]

#: Physical field of view (x, y, z) in mm of every phantom; the anatomy is laid out inside it.
FOV_MM: tuple[float, float, float] = (192.0, 192.0, 160.0)

#: Internal structure ids of :attr:`Phantom.organs` (index + 1). Tumours keep the side of their kidney.
ORGANS: tuple[str, ...] = (
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "ivc",
    "portal_vein",
    "pancreas",
    "right_adrenal",
    "left_adrenal",
    "duodenum",
    "bladder",
    "prostate_uterus",
    "right_kidney_tumour",
    "left_kidney_tumour",
)
_ID = {name: i + 1 for i, name in enumerate(ORGANS)}

#: BTCV's 13 labels (Synapse multi-atlas challenge), name -> label value; tumours count as their kidney.
BTCV_LABELS: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "ivc": 9,
    "portal_vein": 10,
    "pancreas": 11,
    "right_adrenal": 12,
    "left_adrenal": 13,
    "right_kidney_tumour": 2,
    "left_kidney_tumour": 3,
}

#: AMOS22's 15 labels, name -> label value (AMOS has no portal vein label; tumours count as their kidney).
AMOS_LABELS: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "ivc": 9,
    "pancreas": 10,
    "right_adrenal": 11,
    "left_adrenal": 12,
    "duodenum": 13,
    "bladder": 14,
    "prostate_uterus": 15,
    "right_kidney_tumour": 2,
    "left_kidney_tumour": 3,
}

#: KiTS19's labels: 1 kidney (either side), 2 tumour.
KITS_LABELS: dict[str, int] = {
    "right_kidney": 1,
    "left_kidney": 1,
    "right_kidney_tumour": 2,
    "left_kidney_tumour": 2,
}

#: Default tissue intensities (HU), roughly a portal-venous phase; a style overrides any subset.
DEFAULT_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "soft": 40.0,
    "muscle": 50.0,
    "bone": 450.0,
    "csf": 15.0,
    "bowel": 30.0,
    "gas": -700.0,
    "liver": 60.0,
    "spleen": 50.0,
    "kidney": 150.0,
    "kidney_medulla": 150.0,
    "tumour": 35.0,
    "gallbladder": 10.0,
    "stomach": 30.0,
    "pancreas": 45.0,
    "duodenum": 35.0,
    "esophagus": 40.0,
    "adrenal": 45.0,
    "bladder": 5.0,
    "prostate_uterus": 40.0,
    "aorta": 160.0,
    "ivc": 150.0,
    "portal_vein": 150.0,
}


def axis_box(axes: tuple[np.ndarray, ...], center: np.ndarray, reach: np.ndarray) -> tuple[slice, ...] | None:
    """Index slices of the voxels whose coordinates lie within ``center ± reach`` along each axis.

    Args:
        axes: the sorted world coordinates (mm) of the voxel centres along each axis.
        center, reach: box centre and half-size (mm) per axis.

    Returns:
        One slice per axis, or None when the box misses the grid on some axis.
    """
    box = []
    for ax, c, r in zip(axes, center, reach, strict=True):
        lo = int(np.searchsorted(ax, c - r))
        hi = int(np.searchsorted(ax, c + r, side="right"))
        if hi <= lo:
            return None
        box.append(slice(lo, hi))
    return tuple(box)


def check_axcodes(name: str, axcodes: str) -> str:
    """Check an on-disk orientation given as three nibabel axis codes (``"RAS"``, ``"LPS"``, ``"IPL"`` ...).

    Raises:
        ConfigError: not three valid, distinct-axis codes (the message names ``name``).
    """
    try:
        ornt = axcodes2ornt(tuple(axcodes))
    except Exception:  # noqa: BLE001 - nibabel raises several types for bad codes
        ornt = None
    if ornt is None or len(axcodes) != 3 or np.isnan(ornt).any():
        raise ConfigError(f"{name}={axcodes!r}: expected three nibabel codes such as 'RAS'")
    return axcodes


@dataclass(frozen=True)
class PhantomStyle:
    """Everything that makes one simulated dataset look different from another.

    Args:
        hu: tissue -> HU overrides of :data:`DEFAULT_HU` (contrast phase). ``kidney`` is the cortex and
            ``kidney_medulla`` the medulla (equal values give a homogeneous kidney).
        noise_std: std of additive Gaussian noise in HU (>= 0), applied after blur. Default 20.
        blur_sigma_mm: Gaussian blur std per axis (x, y, z) in mm (>= 0), applied to the noise-free image,
            e.g. slice thickness along z. Default (0, 0, 4) mm.
        texture_std: std of the smooth within-organ texture in HU (>= 0). Default 6.
        spacing: voxel spacing (x, y, z) in mm at ``size="demo"``; the shape is ``FOV_MM / spacing``.
        intensity_scale: multiplies the final image (scanner/reconstruction shift), > 0. Default 1.
        intensity_offset: added after scaling, in HU. Default 0.
        axcodes: on-disk orientation of the written arrays as nibabel axis codes; "RAS" keeps (x, y, z),
            "IPL" is KiTS19's (slices first). Default "RAS".
        perirenal_fat: size of the perirenal fat capsule relative to the kidney (>= 1; 1 = none). Default 1.45.
        tumours: (min, max) number of exophytic kidney tumours per case, >= 0. Default (0, 0).
        tumour_radius_mm: (min, max) tumour radius in mm. Default (9, 21).
        organ_scale_jitter: relative organ size jitter, in [0, 0.5]: each organ is scaled by U(1-j, 1+j).
        position_jitter_mm: organ centre jitter (uniform +-) in mm, >= 0. Default 6.
        shape_jitter: amplitude of the smooth boundary deformation, in [0, 0.6]. Default 0.15.
        kidney_tilt_deg: (min, max) coronal tilt of each kidney's long axis in degrees. Default (5, 25).
        small_organ_scale: size multiplier of the small structures (adrenals, oesophagus, portal vein,
            gallbladder), >= 0.5; > 1 makes them easier to learn. Default 1.
        bowel_gas: probability that a bowel loop holds a gas pocket, in [0, 1]. Default 0.3.
        medulla_scale: size of the renal medulla relative to the kidney, in [0.3, 0.9]. Default 0.62.
    """

    hu: Mapping[str, float] = field(default_factory=dict)
    noise_std: float = 20.0
    blur_sigma_mm: tuple[float, float, float] = (0.0, 0.0, 4.0)
    texture_std: float = 6.0
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0)
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    axcodes: str = "RAS"
    perirenal_fat: float = 1.45
    tumours: tuple[int, int] = (0, 0)
    tumour_radius_mm: tuple[float, float] = (9.0, 21.0)
    organ_scale_jitter: float = 0.15
    position_jitter_mm: float = 6.0
    shape_jitter: float = 0.15
    kidney_tilt_deg: tuple[float, float] = (5.0, 25.0)
    small_organ_scale: float = 1.0
    bowel_gas: float = 0.3
    medulla_scale: float = 0.62

    def __post_init__(self) -> None:
        unknown = sorted(set(self.hu) - set(DEFAULT_HU))
        if unknown:
            raise ConfigError(f"PhantomStyle.hu: unknown tissue(s) {unknown}; expected keys of {sorted(DEFAULT_HU)}")
        if self.noise_std < 0 or self.texture_std < 0 or min(self.blur_sigma_mm) < 0:
            raise ConfigError("PhantomStyle: noise_std, texture_std and blur_sigma_mm must be >= 0")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ConfigError(f"PhantomStyle.spacing={self.spacing}: expected three spacings > 0 mm")
        if self.intensity_scale <= 0:
            raise ConfigError(f"PhantomStyle.intensity_scale={self.intensity_scale}: expected > 0")
        check_axcodes("PhantomStyle.axcodes", self.axcodes)
        if self.tumours[0] < 0 or self.tumours[1] < self.tumours[0]:
            raise ConfigError(f"PhantomStyle.tumours={self.tumours}: expected (min, max) with 0 <= min <= max")
        if not 0 <= self.organ_scale_jitter <= 0.5 or not 0 <= self.shape_jitter <= 0.6:
            raise ConfigError("PhantomStyle: organ_scale_jitter must be in [0, 0.5] and shape_jitter in [0, 0.6]")
        if not 0.3 <= self.medulla_scale <= 0.9:
            raise ConfigError(f"PhantomStyle.medulla_scale={self.medulla_scale}: expected a value in [0.3, 0.9]")
        if self.perirenal_fat < 1 or self.small_organ_scale < 0.5 or not 0 <= self.bowel_gas <= 1:
            raise ConfigError("PhantomStyle: perirenal_fat >= 1, small_organ_scale >= 0.5, bowel_gas in [0, 1]")

    def tissue_hu(self) -> dict[str, float]:
        """The full tissue -> HU table of this style (defaults updated with :attr:`hu`)."""
        table = dict(DEFAULT_HU)
        table.update({k: float(v) for k, v in self.hu.items()})
        return table

    def replace(self, **changes: object) -> PhantomStyle:
        """A copy with some fields changed; ``hu`` given here is merged into the current overrides."""
        if "hu" in changes:
            changes["hu"] = {**dict(self.hu), **dict(changes["hu"])}  # type: ignore[arg-type]
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Phantom:
    """One generated case, in the on-disk orientation of its style.

    Attributes:
        image: float32 intensities (HU after scale/offset), shape as stored on disk.
        organs: uint8 internal structure ids (see :data:`ORGANS`; 0 = no labelled structure).
        affine: 4x4 voxel -> RAS+ mm matrix matching ``image``.
        spacing: voxel spacing along the three array axes (mm).
        axcodes: nibabel axis codes of the array axes.
    """

    image: np.ndarray
    organs: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    axcodes: str

    def labels(self, mapping: Mapping[str, int]) -> np.ndarray:
        """Label map for a dataset convention: structure name -> label value; unlisted structures become 0.

        Args:
            mapping: e.g. :data:`BTCV_LABELS`, :data:`AMOS_LABELS`, :data:`KITS_LABELS`.

        Returns:
            uint8 array with the shape of :attr:`image`.
        """
        lut = np.zeros(len(ORGANS) + 1, dtype=np.uint8)
        for name, value in mapping.items():
            if name not in _ID:
                raise ConfigError(f"label mapping names unknown structure {name!r}; expected one of {list(ORGANS)}")
            lut[_ID[name]] = value
        return lut[self.organs]

    def image_nifti(self, dtype: type = np.int16) -> nib.Nifti1Image:
        """The image as a NIfTI-1 image (default int16 HU, like most CT archives)."""
        data = self.image
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        return _nifti(data.astype(dtype), self.affine)

    def label_nifti(self, mapping: Mapping[str, int]) -> nib.Nifti1Image:
        """The label map of ``mapping`` as a uint8 NIfTI-1 image with the image's affine."""
        return _nifti(self.labels(mapping), self.affine)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def reorient_array(
    data: np.ndarray, affine: np.ndarray, from_axcodes: str, to_axcodes: str
) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``data`` from one axis-code orientation to another and update its affine.

    Args:
        data: 3-D array whose axes follow ``from_axcodes``.
        affine: its 4x4 voxel -> world matrix.
        from_axcodes: e.g. "RAS".
        to_axcodes: e.g. "IPL".

    Returns:
        (reoriented array, its affine) describing the same voxels in world space.
    """
    transform = ornt_transform(axcodes2ornt(tuple(from_axcodes)), axcodes2ornt(tuple(to_axcodes)))
    out = np.ascontiguousarray(apply_orientation(data, transform))
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    return out, new_affine


# ----------------------------------------------------------------------------------------------- geometry


def _rotation(rz: float, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles (degrees) about z, then y, then x (applied to local -> world)."""
    a, b, c = (math.radians(v) for v in (rz, ry, rx))
    mz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    my = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    mx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return mz @ my @ mx


class _Canvas:
    """RAS voxel grid with vectorised ellipsoid rasterisation restricted to bounding boxes."""

    def __init__(self, spacing: tuple[float, float, float], jitter: np.ndarray, jitter_amp: float) -> None:
        self.spacing = np.asarray(spacing, dtype=float)
        self.shape = tuple(int(max(4, round(f / s))) for f, s in zip(FOV_MM, spacing, strict=True))
        # voxel centres in mm, field of view centred on 0
        self.axes = [(np.arange(n) + 0.5) * s - n * s / 2 for n, s in zip(self.shape, self.spacing, strict=True)]
        self.jitter = jitter
        self.jitter_amp = jitter_amp

    def ellipsoid(
        self,
        center: np.ndarray,
        semi: np.ndarray,
        rot: np.ndarray | None = None,
        jitter: float | None = None,
        scale: float = 1.0,
    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """Boolean mask of an (optionally rotated, deformed) ellipsoid within its bounding box.

        Returns:
            (bounding-box slices, mask over that box), or None when it misses the grid.
        """
        semi = np.asarray(semi, dtype=float) * scale
        amp = self.jitter_amp if jitter is None else jitter
        grow = math.sqrt(1.0 + 4.0 * amp) + 0.05  # the deformation field rarely exceeds 4 std
        reach = semi.max() * grow if rot is not None else semi * grow
        reach = np.broadcast_to(reach, (3,))
        box_t = axis_box(self.axes, center, reach)
        if box_t is None:
            return None
        d = [self.axes[i][box_t[i]] - center[i] for i in range(3)]
        dx, dy, dz = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
        if rot is None:
            f = (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2
        else:
            f = 0.0
            for k in range(3):  # local coordinate k = column k of rot dotted with the offset
                q = rot[0, k] * dx + rot[1, k] * dy + rot[2, k] * dz
                f = f + (q / semi[k]) ** 2
        if amp > 0:
            f = f + amp * self.jitter[box_t]
        return box_t, f < 1.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth zero-mean unit-std random field: coarse noise upsampled with cubic splines."""
    coarse = rng.standard_normal([max(2, min(cells, n)) for n in shape])
    field_ = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=3, mode="nearest")
    field_ = field_[: shape[0], : shape[1], : shape[2]]
    if field_.shape != tuple(shape):  # zoom can be one voxel short
        field_ = np.pad(field_, [(0, n - m) for n, m in zip(shape, field_.shape, strict=True)], mode="edge")
    return ((field_ - field_.mean()) / (field_.std() + 1e-6)).astype(np.float32)


# Organ layout in RAS mm: centre, semi-axes, rotation (deg about z, y, x). +x = patient right, +y = anterior.
_LAYOUT: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]] = {
    "liver": ((36.0, 8.0, 42.0), (46.0, 42.0, 32.0), (10.0, 0.0, 0.0)),
    "gallbladder": ((30.0, 34.0, 12.0), (9.0, 11.0, 15.0), (0.0, 0.0, 20.0)),
    "spleen": ((-54.0, -22.0, 38.0), (14.0, 24.0, 26.0), (30.0, 0.0, 0.0)),
    "stomach": ((-26.0, 22.0, 44.0), (24.0, 17.0, 22.0), (-20.0, 0.0, 0.0)),
    "pancreas": ((-6.0, 6.0, 12.0), (36.0, 9.0, 8.0), (12.0, -12.0, 0.0)),
    "duodenum": ((24.0, 4.0, -2.0), (9.0, 10.0, 20.0), (0.0, 0.0, 0.0)),
    "portal_vein": ((16.0, 10.0, 24.0), (16.0, 5.0, 5.0), (35.0, 20.0, 0.0)),
    "right_kidney": ((40.0, -24.0, -12.0), (16.0, 14.0, 31.0), (20.0, 0.0, 0.0)),
    "left_kidney": ((-40.0, -24.0, -4.0), (16.0, 14.0, 31.0), (-20.0, 0.0, 0.0)),
    "right_adrenal": ((28.0, -22.0, 28.0), (4.5, 9.0, 8.0), (20.0, 0.0, 0.0)),
    "left_adrenal": ((-28.0, -20.0, 35.0), (4.5, 9.0, 8.0), (-20.0, 0.0, 0.0)),
    "esophagus": ((-12.0, -4.0, 62.0), (7.0, 7.0, 22.0), (0.0, 0.0, 0.0)),
    "bladder": ((0.0, 28.0, -66.0), (27.0, 19.0, 16.0), (0.0, 0.0, 0.0)),
    "prostate_uterus": ((0.0, 4.0, -72.0), (13.0, 10.0, 9.0), (0.0, 0.0, 0.0)),
}
_SMALL = ("right_adrenal", "left_adrenal", "esophagus", "portal_vein", "gallbladder")


def generate_phantom(
    style: PhantomStyle | None = None, seed: int = 0, case_index: int = 0, spacing_scale: float = 1.0
) -> Phantom:
    """Draw one abdominal CT phantom.

    The same (style, seed, case_index, spacing_scale) always gives the same arrays.

    Args:
        style: appearance; default :class:`PhantomStyle()` (homogeneous bright kidneys, no tumours).
        seed: dataset seed (>= 0).
        case_index: case number within the dataset (>= 0); cases differ in anatomy and noise.
        spacing_scale: multiplies ``style.spacing`` (> 0); e.g. 2.7 gives ~24-voxel test volumes.

    Returns:
        :class:`Phantom` in ``style.axcodes`` orientation.

    Raises:
        ConfigError: negative seed/case index or non-positive ``spacing_scale``.
    """
    style = style or PhantomStyle()
    if seed < 0 or case_index < 0 or spacing_scale <= 0:
        raise ConfigError(
            f"generate_phantom(seed={seed}, case_index={case_index}, spacing_scale={spacing_scale}): "
            "expected seed >= 0, case_index >= 0, spacing_scale > 0"
        )
    rng = np.random.default_rng([int(seed), int(case_index), 7919])
    spacing = tuple(float(s) * spacing_scale for s in style.spacing)
    shape = tuple(int(max(4, round(f / s))) for f, s in zip(FOV_MM, spacing, strict=True))
    hu = style.tissue_hu()
    canvas = _Canvas(spacing, _smooth_field(rng, shape, 6), style.shape_jitter)  # type: ignore[arg-type]
    tissue = np.full(shape, hu["air"], dtype=np.float32)
    organs = np.zeros(shape, dtype=np.uint8)
    sj = style.organ_scale_jitter
    pj = style.position_jitter_mm

    def paint(hit: tuple[tuple[slice, ...], np.ndarray] | None, value: float, label: int | None) -> None:
        if hit is None:
            return
        box, mask = hit
        mask = mask & body[box]
        tissue[box][mask] = value
        if label is not None:
            organs[box][mask] = label

    # body outline (elliptic cylinder, z-extent = FOV), subcutaneous fat, visceral soft tissue
    bx, by = 88.0 * rng.uniform(0.93, 1.05), 64.0 * rng.uniform(0.93, 1.05)
    x, y = canvas.axes[0][:, None], canvas.axes[1][None, :]
    r2 = (x / bx) ** 2 + ((y - 2.0) / by) ** 2
    body2d = r2 < 1.0
    body = np.broadcast_to(body2d[:, :, None], shape)
    fat_t = rng.uniform(0.84, 0.9)
    tissue[body] = hu["fat"]
    inner = np.broadcast_to(((x / (bx * fat_t)) ** 2 + ((y - 2.0) / (by * fat_t)) ** 2 < 1.0)[:, :, None], shape)
    tissue[inner] = hu["soft"]
    full = (slice(None),) * 3
    # muscles: paraspinal (whole length) and psoas (lower abdomen)
    for side in (1.0, -1.0):
        paint((full, _cyl(canvas, (side * 22.0, -52.0), (15.0, 10.0))), hu["muscle"], 0)
        paint(canvas.ellipsoid(np.array([side * 21.0, -32.0, -45.0]), np.array([9.0, 9.0, 55.0])), hu["muscle"], 0)
    # bowel loops (unlabelled distractors), some with a gas pocket
    for _ in range(int(rng.integers(6, 10))):
        c = np.array([rng.uniform(-45, 45), rng.uniform(5, 45), rng.uniform(-60, 5)])
        s = rng.uniform(9, 16, size=3)
        paint(canvas.ellipsoid(c, s, _rotation(rng.uniform(0, 180))), hu["bowel"] + rng.uniform(-10, 10), 0)
        if rng.random() < style.bowel_gas:
            paint(canvas.ellipsoid(c + np.array([0, s[1] * 0.4, 0]), s * 0.4, jitter=0.0), hu["gas"], 0)

    # organ geometry for this case
    geo = {}
    for name, (c, s, r) in _LAYOUT.items():
        center = np.asarray(c) + rng.uniform(-pj, pj, size=3)
        semi = np.asarray(s) * rng.uniform(1 - sj, 1 + sj)
        if name in _SMALL:
            semi = semi * style.small_organ_scale
        rot = np.asarray(r, dtype=float) + rng.uniform(-8, 8, size=3)
        if name.endswith("kidney"):
            side = 1.0 if name.startswith("right") else -1.0
            tilt = rng.uniform(*style.kidney_tilt_deg)  # upper pole leans medially
            rot = np.array([r[0] + rng.uniform(-8, 8), -side * tilt, rng.uniform(-5, 5)])
        geo[name] = (center, semi, _rotation(*rot))

    # perirenal fat capsules first, so organs painted later keep their own boundaries
    for name in ("right_kidney", "left_kidney"):
        c, s, rot = geo[name]
        paint(canvas.ellipsoid(c, s * style.perirenal_fat, rot, jitter=0.05), hu["fat"], 0)
    for name, tissue_name in (
        ("liver", "liver"),
        ("spleen", "spleen"),
        ("stomach", "stomach"),
        ("gallbladder", "gallbladder"),
        ("pancreas", "pancreas"),
        ("duodenum", "duodenum"),
        ("bladder", "bladder"),
        ("prostate_uterus", "prostate_uterus"),
    ):
        c, s, rot = geo[name]
        paint(canvas.ellipsoid(c, s, rot), hu[tissue_name], _ID[name])
    # stomach gas/fluid level: anterior part of the lumen
    c, s, rot = geo["stomach"]
    if rng.random() < 0.5:
        paint(canvas.ellipsoid(c + np.array([0, s[1] * 0.55, s[2] * 0.3]), s * 0.35, rot, jitter=0.0), hu["gas"], None)

    # kidneys: bean = ellipsoid minus a medial hilum notch; medulla inside; sinus fat in the notch
    for name in ("right_kidney", "left_kidney"):
        c, s, rot = geo[name]
        side = 1.0 if name.startswith("right") else -1.0
        hilum_c = c + rot @ np.array([-side * s[0] * 0.95, s[1] * 0.25, 0.0])
        outer = canvas.ellipsoid(c, s, rot)
        notch = canvas.ellipsoid(hilum_c, s * np.array([0.55, 0.45, 0.35]), rot, jitter=0.0)
        medulla = canvas.ellipsoid(c, s * style.medulla_scale, rot, jitter=0.05)
        paint(outer, hu["kidney"], _ID[name])
        paint(medulla, hu["kidney_medulla"], _ID[name])
        paint(notch, hu["fat"], 0)
        geo[name + "_hilum"] = (hilum_c, s, rot)
    # exophytic tumours (label = tumour of that side), never on the medial (hilum) side
    n_tum = int(rng.integers(style.tumours[0], style.tumours[1] + 1)) if style.tumours[1] > 0 else 0
    for t in range(n_tum):
        name = ("right_kidney", "left_kidney")[int(rng.integers(0, 2)) if t == 0 else t % 2]
        c, s, rot = geo[name]
        side = 1.0 if name.startswith("right") else -1.0
        theta = rng.uniform(-0.6, 0.6) * math.pi  # around the lateral direction
        phi = rng.uniform(-0.35, 0.35) * math.pi
        local = np.array([side * math.cos(theta) * math.cos(phi), math.sin(theta) * math.cos(phi), math.sin(phi)])
        surface = c + rot @ (local * s * 0.85)
        radius = rng.uniform(*style.tumour_radius_mm)
        paint(
            canvas.ellipsoid(surface, np.full(3, radius), jitter=style.shape_jitter * 0.5),
            hu["tumour"],
            _ID[name + "_tumour"],
        )

    # small structures and vessels on top
    for name, tissue_name in (
        ("right_adrenal", "adrenal"),
        ("left_adrenal", "adrenal"),
        ("portal_vein", "portal_vein"),
    ):
        c, s, rot = geo[name]
        paint(canvas.ellipsoid(c, s, rot, jitter=style.shape_jitter * 0.5), hu[tissue_name], _ID[name])
    c, s, _ = geo["esophagus"]
    paint(canvas.ellipsoid(c, s, jitter=0.05), hu["esophagus"], _ID["esophagus"])
    ao = rng.uniform(-3, 3, size=2)
    paint((full, _cyl(canvas, (-8.0 + ao[0], -20.0 + ao[1]), (8.0, 8.0))), hu["aorta"], _ID["aorta"])
    ivc_mask = _cyl(canvas, (16.0 + ao[0], -18.0 + ao[1]), (9.0, 7.0)) & (canvas.axes[2] > -62.0)[None, None, :]
    paint((full, ivc_mask), hu["ivc"], _ID["ivc"])
    # spine: vertebral body + arch (bone) around the canal (csf)
    paint((full, _cyl(canvas, (0.0, -38.0), (13.0, 12.0))), hu["bone"], 0)
    paint((full, _cyl(canvas, (0.0, -57.0), (14.0, 9.0))), hu["bone"], 0)
    paint((full, _cyl(canvas, (0.0, -54.0), (6.0, 5.0))), hu["csf"], 0)

    # texture -> blur -> noise -> scanner scale/offset
    inside = body & (tissue > hu["fat"] + 20)
    image = tissue + style.texture_std * _smooth_field(rng, shape, 12) * inside
    sigma = [b / sp for b, sp in zip(style.blur_sigma_mm, spacing, strict=True)]
    if max(sigma) > 0:
        image = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    if style.noise_std > 0:
        image = image + rng.normal(0.0, style.noise_std, size=shape).astype(np.float32)
    image = image * style.intensity_scale + style.intensity_offset

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [ax[0] for ax in canvas.axes]
    image, new_affine = reorient_array(image.astype(np.float32), affine, "RAS", style.axcodes)
    organs, _ = reorient_array(organs, affine, "RAS", style.axcodes)
    zooms = tuple(float(v) for v in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    return Phantom(image=image, organs=organs, affine=new_affine, spacing=zooms, axcodes=style.axcodes)  # type: ignore[arg-type]


def _cyl(canvas: _Canvas, center_xy: tuple[float, float], semi_xy: tuple[float, float]) -> np.ndarray:
    """Elliptic cylinder along z over the whole grid (broadcast to the full shape)."""
    x = canvas.axes[0][:, None] - center_xy[0]
    y = canvas.axes[1][None, :] - center_xy[1]
    m2d = (x / semi_xy[0]) ** 2 + (y / semi_xy[1]) ** 2 < 1.0
    return np.broadcast_to(m2d[:, :, None], canvas.shape)
