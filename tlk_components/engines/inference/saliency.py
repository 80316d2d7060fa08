# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Saliency for 3D segmentation networks: Grad-CAM per organ and attention-gate coefficients.

**Grad-CAM for segmentation** (Selvaraju et al. 2017; the segmentation form of Vinogradova et al. 2020). For a
chosen layer with activations ``A`` (``K`` channels) and organ ``c`` with logits ``y_c``, the score is the sum of
``y_c`` over the voxels predicted as ``c`` (``region="prediction"``; over every voxel with ``region="volume"``)::

    S_c = sum_{v in M_c} y_c(v),   w_k = mean_v dS_c / dA_k(v),   L_c = ReLU(sum_k w_k A_k)

and ``L_c`` is upsampled (trilinear) to the input size. MONAI's :class:`monai.visualize.GradCAM` computes the
``region="volume"`` form (its class score is ``logits[:, c]`` summed over the whole volume) with one forward pass
per class; here one forward pass serves every organ (``torch.autograd.grad`` per organ) and the region can be
the organ's own prediction, which keeps the map about the organ rather than about "everything that is not it".
The test suite checks that ``region="volume"`` equals MONAI's GradCAM.

**Attention-gate coefficients** (Oktay et al. 2018): the sigmoid outputs ``alpha`` of every gate's ``psi`` branch,
recorded by forward hooks (:class:`AttentionGateRecorder`) and upsampled to the input size.

A volume of at most ``whole_volume_max_voxels`` voxels (default 160^3; padded to a multiple of the network's
downsampling) is explained in one pass, so each organ has one set of Grad-CAM weights and the map has no window
seams. Larger volumes go through MONAI's sliding-window inferer with Gaussian blending (bounded memory; each window
has its own weights, which the blending smooths), as does a volume that runs out of GPU memory. Grad-CAM maps are
then scaled to [0, 1] per organ over the whole volume.

Outputs (:func:`save_saliency`): one NIfTI per organ / gate with the input's affine and header, and PNG overlays.
The PNGs follow the convention of every PNG of the CT bundles (:func:`~tlk_components.engines.inference.segmentation.axial_display`):
axial slices in radiological display (anterior up, the patient's right on the image's left, marked "R" and "L"),
the CT in the soft-tissue window (W 400 / L 40 HU, i.e. [-160, 240]), maps drawn only inside the body (the largest
connected region above -500 HU, holes filled slice by slice) and only where they exceed 5 % of their maximum. Each
Grad-CAM panel shows the slice through the centroid of its organ in the prediction (the map's peak slice when the
organ is not predicted); the attention panels show the slice through the centroid of all predicted organs.

References:
    Selvaraju et al. "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization". ICCV 2017.
    https://arxiv.org/abs/1610.02391
    Vinogradova, Dibrov, Myers. "Towards Interpretable Semantic Segmentation via Gradient-weighted Class
    Activation Mapping". AAAI 2020. https://arxiv.org/abs/2002.11434
    Oktay et al. "Attention U-Net: Learning Where to Look for the Pancreas". MIDL 2018.
    https://arxiv.org/abs/1804.03999
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.inferers import sliding_window_inference
from monai.networks.nets.attentionunet import AttentionBlock
from monai.transforms import MapTransform
from nibabel.orientations import apply_orientation, io_orientation
from torch import nn

from tlk_components.engines.inference.segmentation import add_lr_markers, axial_display, display_window, save_nifti_like
from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option, parse_flag

__all__ = [
    "AttentionGateRecorder",
    "SaliencyMapd",
    "SaliencyMapper",
    "SaveSaliencyd",
    "SegmentationGradCAM",
    "attention_gate_names",
    "body_mask",
    "centroid_slice",
    "check_layer",
    "layer_names",
    "save_saliency",
]

logger = logging.getLogger(__name__)

#: Volumes up to this many voxels are explained in one pass (no sliding window): 160^3.
WHOLE_VOLUME_MAX_VOXELS = 160**3

_CONV_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def layer_names(network: nn.Module) -> list[str]:
    """Names of the layers Grad-CAM can use: every submodule that holds a convolution (blocks and the convolutions).

    Args:
        network: the segmentation network (a DDP/DataParallel wrapper is unwrapped).

    Returns:
        Module names in definition order, e.g. ``["encoders", "encoders.0", "encoders.0.conv1", ...]``.
    """
    net = unwrap_model(network)
    names = []
    for name, mod in net.named_modules():
        if name and any(isinstance(m, _CONV_TYPES) for m in mod.modules()):
            names.append(name)
    return names


def check_layer(network: nn.Module, name: str) -> str:
    """Return ``name`` if it is a Grad-CAM layer of ``network``; otherwise raise listing the valid names.

    Raises:
        ConfigError: unknown layer, with the closest names and the full list.
    """
    valid = layer_names(network)
    if name in valid:
        return name
    close = difflib.get_close_matches(str(name), valid, n=3)
    hint = f" Closest: {close}." if close else ""
    raise ConfigError(
        f"saliency_layer={name!r} is not a layer of {type(unwrap_model(network)).__name__}.{hint} "
        f"Valid layers ({len(valid)}): {', '.join(valid)}. Set --saliency_layer to one of them."
    )


def attention_gate_names(network: nn.Module) -> list[str]:
    """Names of the attention-gate coefficient modules (``<gate>.psi`` of each MONAI ``AttentionBlock``), finest first.

    Returns an empty list for networks without attention gates (e.g. :class:`~tlk_components.networks.unet3d.UNet3D`).
    """
    net = unwrap_model(network)
    names = [f"{n}.psi" for n, m in net.named_modules() if isinstance(m, AttentionBlock)]
    return sorted(names, key=len)  # MONAI nests coarser gates deeper, so shorter names are finer levels


class AttentionGateRecorder:
    """Record attention-gate coefficients with forward hooks while used as a context manager.

    Args:
        network: a network with MONAI attention gates (none is fine: nothing is recorded).

    Example:
        >>> with AttentionGateRecorder(net) as rec:
        ...     net(x)
        >>> {name: a.shape for name, a in rec.coefficients.items()}  # (B, 1, *gate_spatial) each, values in [0, 1]
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = unwrap_model(network)
        self.names = attention_gate_names(self.network)
        self.coefficients: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionGateRecorder:
        modules = dict(self.network.named_modules())
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.coefficients[name] = output.detach()

        return hook


class SegmentationGradCAM:
    """Grad-CAM maps of several organs from one forward pass of a segmentation network.

    Args:
        network: the network (put in eval mode while maps are computed; its mode is restored afterwards).
        target_layer: a name from :func:`layer_names` (checked here).
        classes: organ indices to explain; default every class except background (``1 .. C-1``).
        region: ``"prediction"`` (default; the score sums the organ's logit over the voxels predicted as that organ)
            or ``"volume"`` (over every voxel, as MONAI's GradCAM).

    Shape:
        ``__call__(x)``: ``x`` ``(B, in_channels, *spatial)`` -> ``(logits (B, C, *spatial), maps (B, K, *spatial))``
        with ``K = len(classes)``; maps are ReLU'd, not normalised.

    Raises:
        ConfigError: unknown layer (listing the valid ones), unknown region, or a class index outside the output.
    """

    def __init__(
        self,
        network: nn.Module,
        target_layer: str,
        classes: Sequence[int] | None = None,
        region: str = "prediction",
    ) -> None:
        self.network = network
        self.target_layer = check_layer(network, target_layer)
        self.region = look_up_option("saliency_region", region, ("prediction", "volume"))
        self.classes = (
            None if classes is None else [check_positive_int("saliency class", c, minimum=0) for c in classes]
        )
        self._layer = dict(unwrap_model(network).named_modules())[self.target_layer]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        store: dict[str, torch.Tensor] = {}

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            store["acti"] = output

        was_training = self.network.training
        self.network.eval()
        handle = self._layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = self.network(x)
                classes = self._resolve_classes(logits.shape[1])
                acti = store["acti"]
                if not acti.requires_grad:
                    raise ConfigError(
                        f"saliency_layer={self.target_layer!r}: its output has no gradient; pick a layer "
                        "with trainable parameters upstream"
                    )
                labels = logits.detach().argmax(1)
                maps = []
                for i, c in enumerate(classes):
                    score = logits[:, c]
                    if self.region == "prediction":
                        score = score * (labels == c).to(score.dtype)
                    (grad,) = torch.autograd.grad(score.sum(), acti, retain_graph=i < len(classes) - 1)
                    weights = grad.flatten(2).mean(2).view(*grad.shape[:2], *[1] * (grad.ndim - 2))
                    maps.append(F.relu((weights * acti.detach()).sum(1, keepdim=True)))
        finally:
            handle.remove()
            self.network.train(was_training)
        cams = torch.cat(maps, dim=1)
        if cams.shape[2:] != x.shape[2:]:
            mode = "trilinear" if x.ndim == 5 else "bilinear"
            cams = F.interpolate(cams, size=x.shape[2:], mode=mode, align_corners=False)
        return logits.detach(), cams

    def _resolve_classes(self, n_classes: int) -> list[int]:
        if self.classes is None:
            return list(range(1, n_classes))
        bad = [c for c in self.classes if c >= n_classes]
        if bad:
            raise ConfigError(
                f"saliency classes {bad} do not exist: the network has {n_classes} output classes "
                f"(0 .. {n_classes - 1})"
            )
        return list(self.classes)


class SaliencyMapper:
    """Grad-CAM per organ and attention-gate coefficients for a whole volume, by sliding window.

    Args:
        network: the trained segmentation network.
        target_layer: Grad-CAM layer name (see :func:`layer_names`; a wrong name lists the valid ones).
        roi_size: sliding-window patch size (as in inference), each a multiple of the network's downsampling.
        sw_batch_size: windows per forward pass, >= 1; default 1 (saliency keeps every window's graph).
        overlap: window overlap in [0, 1); default 0.25.
        classes: organ indices; default all but background.
        region: Grad-CAM score region, ``"prediction"`` (default) or ``"volume"``.
        whole_volume_max_voxels: explain volumes of at most this many voxels in one pass (no window seams); 0 =
            always slide windows. Default :data:`WHOLE_VOLUME_MAX_VOXELS` (160^3).

    Shape:
        ``__call__(image)``: ``image`` ``(1, in_channels, *spatial)`` -> dict with ``"gradcam"`` ``(K, *spatial)`` in
        [0, 1] (each organ scaled by its maximum over the volume) and ``"attention"`` ``(G, *spatial)`` in [0, 1]
        (``G = 0`` for networks without gates).
    """

    def __init__(
        self,
        network: nn.Module,
        target_layer: str,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        classes: Sequence[int] | None = None,
        region: str = "prediction",
        whole_volume_max_voxels: int = WHOLE_VOLUME_MAX_VOXELS,
    ) -> None:
        self.gradcam = SegmentationGradCAM(network, target_layer, classes=classes, region=region)
        self.network = network
        self.roi_size = [check_positive_int("roi_size", r) for r in roi_size]
        self.sw_batch_size = check_positive_int("sw_batch_size", sw_batch_size)
        self.overlap = check_in_range("overlap", overlap, 0.0, 0.99)
        self.gate_names = attention_gate_names(network)
        self.whole_volume_max_voxels = check_positive_int("whole_volume_max_voxels", whole_volume_max_voxels, minimum=0)
        # the patch size is a multiple of the network's downsampling: pad whole volumes to its largest power of 2
        self.divisor = math.gcd(*self.roi_size, 32) & -math.gcd(*self.roi_size, 32)

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        with AttentionGateRecorder(self.network) as rec:
            _, cams = self.gradcam(x)
        parts = [cams]
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        for name in self.gate_names:
            parts.append(F.interpolate(rec.coefficients[name], size=x.shape[2:], mode=mode, align_corners=False))
        return torch.cat(parts, dim=1)

    def _whole(self, image: torch.Tensor) -> torch.Tensor:
        """Maps of the whole volume in one pass: padded (with its minimum) to a multiple of the downsampling."""
        pad: list[int] = []
        for n in reversed(image.shape[2:]):
            extra = -n % self.divisor
            pad += [extra // 2, extra - extra // 2]
        x = F.pad(image, pad, value=float(image.min())) if any(pad) else image
        out = self._window(x)
        crop = [slice(None), slice(None)]
        for n, i in zip(image.shape[2:], range(len(pad) - 2, -1, -2), strict=True):
            crop.append(slice(pad[i], pad[i] + n))
        return out[tuple(crop)]

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.ndim != len(self.roi_size) + 2 or image.shape[0] != 1:
            raise ValueError(
                f"saliency: expected one image of shape (1, C, *spatial) with {len(self.roi_size)} "
                f"spatial axes; got {tuple(image.shape)}"
            )
        out = None
        if math.prod(image.shape[2:]) <= self.whole_volume_max_voxels:
            try:
                out = self._whole(image)
            except torch.OutOfMemoryError:
                logger.warning("saliency: the whole volume does not fit in memory; using Gaussian-blended windows")
                if image.is_cuda:
                    torch.cuda.empty_cache()
        if out is None:
            out = sliding_window_inference(
                image, self.roi_size, self.sw_batch_size, self._window, overlap=self.overlap, mode="gaussian"
            )
        out = torch.as_tensor(out).detach()[0]
        n_gates = len(self.gate_names)
        cams = out[: out.shape[0] - n_gates].clamp_min(0)
        peak = cams.flatten(1).amax(1).clamp_min(1e-12).view(-1, *[1] * (cams.ndim - 1))
        return {"gradcam": cams / peak, "attention": out[out.shape[0] - n_gates :].clamp(0, 1)}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "map"


def body_mask(ct: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The patient's body in a CT volume: the largest connected region above ``threshold`` HU, holes filled.

    Air around the patient (and the table, when not connected to the body) is excluded; air inside the body (bowel
    gas, lungs) is kept by filling holes slice by slice along the last axis. A volume not in HU (no voxel below
    ``threshold``) uses 5 % of its intensity range above the minimum as the threshold.

    Args:
        ct: 2-D or 3-D intensities.
        threshold: HU above which a voxel may be body; default -500.

    Returns:
        Boolean mask of ``ct``'s shape (all False for an empty or constant image).
    """
    from scipy import ndimage

    ct = np.asarray(ct, dtype=np.float32)
    if ct.size == 0:
        return np.zeros(ct.shape, bool)
    lo, hi = float(ct.min()), float(ct.max())
    if lo >= threshold:
        threshold = lo + 0.05 * (hi - lo)
    fg = ct > threshold
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == int(np.argmax(sizes)) + 1
    if mask.ndim == 3:
        for z in range(mask.shape[-1]):
            mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    else:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def centroid_slice(mask: np.ndarray) -> int | None:
    """Index along the last axis of the centroid of ``mask`` (rounded), or None when the mask is empty."""
    m = np.asarray(mask) > 0
    if not m.any():
        return None
    z = np.nonzero(m.reshape(-1, m.shape[-1]).sum(0))[0]
    weights = m.reshape(-1, m.shape[-1]).sum(0)[z]
    return int(np.clip(np.rint(np.average(z, weights=weights)), 0, m.shape[-1] - 1))


def _overlay_png(
    ct: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    path: Path,
    suptitle: str,
    slices: Sequence[int | None] | None = None,
) -> Path:
    """Panels of ``maps`` over ``ct`` (all RAS-ordered), radiological display, maps masked to the body.

    ``slices[i]`` is the axial slice of panel ``i``; None (or no ``slices``) = the slice of the map's peak.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlk_components.engines.handlers.reporting import save_figure

    n = len(maps)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    vmin, vmax = display_window(ct)
    body = body_mask(ct)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, m, title) in enumerate(zip(axes.ravel(), maps, titles, strict=False)):
        z = slices[i] if slices is not None and i < len(slices) else None
        if z is None:
            z = int(np.argmax(m.reshape(-1, m.shape[-1]).max(0))) if m.ndim == 3 else 0  # slice of the peak
        if ct.ndim == 3:
            ct_slice, m_slice, b_slice = axial_display(ct, z), axial_display(m, z), axial_display(body, z)
        else:
            ct_slice, m_slice, b_slice = (np.fliplr(np.rot90(a)) for a in (ct, m, body))
        ax.imshow(ct_slice, cmap="gray", vmin=vmin, vmax=vmax)
        ax.imshow(m_slice, cmap="jet", alpha=0.45 * ((m_slice > 0.05) & b_slice), vmin=0, vmax=1)
        add_lr_markers(ax)
        note = f"axial slice {z} (RAS)" if float(m.max()) > 0 else "not predicted"
        ax.set_title(f"{title.replace('_', ' ')}\n({note})", fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def save_saliency(
    maps: Mapping[str, torch.Tensor | np.ndarray],
    ct: torch.Tensor | np.ndarray,
    reference: Any,
    output_dir: str | os.PathLike,
    case: str,
    class_names: Sequence[str],
    gate_names: Sequence[str] = (),
    segmentation: torch.Tensor | np.ndarray | None = None,
    classes: Sequence[int] | None = None,
) -> list[Path]:
    """Write Grad-CAM and attention maps as NIfTI (the input's affine and header) and PNG overlays on the CT.

    Files, in ``<output_dir>/<case>/``: ``gradcam_<organ>.nii.gz`` per organ, ``attention_gate<i>.nii.gz`` per gate
    (``i = 0`` finest), ``gradcam.png`` (one panel per organ on the axial slice through the organ's centroid in
    ``segmentation``; the map's peak slice without one) and ``attention.png`` (gate ``i`` is ``gate_names[i]``,
    finest first; the slice through the centroid of all segmented organs). PNG conventions: see the module docstring.

    Args:
        maps: ``{"gradcam": (K, *spatial), "attention": (G, *spatial)}`` already in the input image's voxel grid.
        ct: the CT volume in the same grid (``(*spatial)`` or ``(1, *spatial)``), any intensity scale.
        reference: the input's ``nibabel`` image (its affine, qform/sform and header are copied).
        output_dir: root folder of the saliency outputs.
        case: case name (sub-folder).
        class_names: ``K`` organ names, in the order of ``maps["gradcam"]``.
        gate_names: ``G`` gate module names (written into each gate file's NIfTI ``descrip`` field).
        segmentation: the predicted (or reference) label map on the same grid (``(*spatial)`` or
            ``(1, *spatial)``), used to choose the slices; default none.
        classes: label value of each Grad-CAM map; default ``1 .. K``.

    Returns:
        The paths written.

    Raises:
        ValueError: a map whose spatial shape differs from the CT's, or a name count that does not match.
    """
    ct_np = np.asarray(ct.detach().cpu() if isinstance(ct, torch.Tensor) else ct, dtype=np.float32)
    if ct_np.ndim == len(reference.shape) + 1:
        ct_np = ct_np[0]
    out_dir = Path(output_dir) / _safe(case)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ornt = io_orientation(reference.affine)  # display in RAS whatever the on-disk orientation
    seg = None
    if segmentation is not None:
        seg = np.asarray(
            segmentation.detach().cpu() if isinstance(segmentation, torch.Tensor) else segmentation, dtype=np.int64
        )
        seg = seg[0] if seg.ndim == ct_np.ndim + 1 else seg
        if seg.shape != ct_np.shape:
            raise ValueError(f"{case}: segmentation shape {seg.shape} differs from the CT's {ct_np.shape}")
        seg = apply_orientation(seg, ornt)
    for key, names, stem in (("gradcam", class_names, "gradcam_"), ("attention", None, "attention_gate")):
        value = maps.get(key)
        if value is None or len(value) == 0:
            continue
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
        if arr.shape[1:] != ct_np.shape:
            raise ValueError(
                f"{case}: {key} maps have spatial shape {arr.shape[1:]}, the CT {ct_np.shape}; "
                "resample the maps to the input grid first"
            )
        if names is not None and len(names) != arr.shape[0]:
            raise ValueError(f"{case}: {arr.shape[0]} Grad-CAM maps but {len(names)} class names {list(names)}")
        labels = list(names) if names is not None else [str(i) for i in range(arr.shape[0])]
        descrips = [f"Grad-CAM {n}" for n in labels] if key == "gradcam" else list(gate_names) or labels
        for i, label in enumerate(labels):
            path = out_dir / f"{stem}{_safe(label)}.nii.gz"
            written.append(
                save_nifti_like(arr[i], reference, path, np.float32, descrips[i] if i < len(descrips) else None)
            )
        if key == "gradcam":
            titles = [f"Grad-CAM {n}" for n in labels]
            values = list(classes) if classes is not None else list(range(1, len(labels) + 1))
            slices = [None if seg is None else centroid_slice(seg == v) for v in values]
        else:
            titles = [f"gate {i} ({'finest' if i == 0 else 'coarser'})" for i in range(len(labels))]
            slices = [None if seg is None else centroid_slice(seg > 0)] * len(labels)
        ras_maps = [apply_orientation(a, ornt) for a in arr]
        ras_ct = apply_orientation(ct_np, ornt)
        written.append(_overlay_png(ras_ct, ras_maps, titles, out_dir / f"{key}.png", f"{case}: {key}", slices))
    return written


class SaliencyMapd(MapTransform):
    """Post-processing transform: Grad-CAM per organ and attention coefficients of a preprocessed image.

    Put it in an inference ``postprocessing`` chain (it reads the network-space image ``d[image_key]``), followed by
    ``Invertd(keys=[gradcam_key, attention_key], orig_keys=image_key)`` to bring the maps back to the input grid
    and :class:`SaveSaliencyd` to write them.

    Args:
        keys: the image key (one), default ``"image"``.
        network: the trained network (moved inputs go to its device).
        target_layer: Grad-CAM layer (a wrong name lists the valid ones when the config is parsed).
        roi_size, sw_batch_size, overlap, classes, region, whole_volume_max_voxels: see :class:`SaliencyMapper`.
        gradcam_key: output key of the Grad-CAM maps ``(K, *spatial)``; default ``"gradcam"``.
        attention_key: output key of the gate coefficients ``(G, *spatial)``; default ``"attention"``.
        enabled: False (or ``"false"``) makes the transform a no-op (nothing is checked or computed), so
            ``--saliency false`` switches it off. Default True.
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: nn.Module,
        target_layer: str,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        classes: Sequence[int] | None = None,
        region: str = "prediction",
        gradcam_key: str = "gradcam",
        attention_key: str = "attention",
        enabled: bool | str = True,
        whole_volume_max_voxels: int = WHOLE_VOLUME_MAX_VOXELS,
    ) -> None:
        super().__init__(keys)
        self.enabled = parse_flag("saliency", enabled)
        if len(self.keys) != 1:
            raise ConfigError(f"SaliencyMapd: expected one image key, got {list(self.keys)}")
        self.mapper = (
            SaliencyMapper(
                network, target_layer, roi_size, sw_batch_size, overlap, classes, region, whole_volume_max_voxels
            )
            if self.enabled
            else None
        )
        self.gradcam_key = gradcam_key
        self.attention_key = attention_key

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        if self.mapper is None:
            return d
        image = d[self.keys[0]]
        device = next(self.mapper.network.parameters()).device
        maps = self.mapper(torch.as_tensor(image).detach()[None].to(device))
        d[self.gradcam_key] = maps["gradcam"].cpu()
        if maps["attention"].shape[0] > 0:  # networks without attention gates get no (empty) map to invert
            d[self.attention_key] = maps["attention"].cpu()
        return d


class SaveSaliencyd(MapTransform):
    """Post-processing transform: write the (inverted) saliency maps of one case with :func:`save_saliency`.

    The reference image (affine, header, and the CT slice under the overlays) is the input file named in
    ``d[image_key].meta["filename_or_obj"]``.

    Args:
        keys: ``(gradcam_key, attention_key)``; default ``("gradcam", "attention")``.
        output_dir: root folder (one sub-folder per case).
        class_names: organ names of the Grad-CAM channels.
        gate_names: names of the attention gates (stored in the NIfTI ``descrip`` field); default none.
        image_key: key of the image whose metadata names the input file; default ``"image"``.
        pred_key: key of the predicted label map on the input grid (after ``Invertd`` and argmax), whose organ
            centroids choose the PNG slices; absent = the maps' peak slices. Default ``"pred"``.
        enabled: False (or ``"false"``) makes the transform a no-op; default True.
    """

    def __init__(
        self,
        keys: KeysCollection = ("gradcam", "attention"),
        output_dir: str | os.PathLike = "saliency",
        class_names: Sequence[str] = (),
        gate_names: Sequence[str] = (),
        image_key: str = "image",
        pred_key: str = "pred",
        enabled: bool | str = True,
    ) -> None:
        super().__init__(keys)
        self.enabled = parse_flag("saliency", enabled)
        self.pred_key = pred_key
        if len(self.keys) != 2:
            raise ConfigError(f"SaveSaliencyd: expected keys (gradcam, attention), got {list(self.keys)}")
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.gate_names = [str(g) for g in gate_names]
        self.image_key = image_key

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        import nibabel as nib

        d = dict(data)
        if not self.enabled:
            return d
        meta = getattr(d[self.image_key], "meta", {}) or {}
        source = meta.get("filename_or_obj")
        if not source:
            raise ValueError(f"SaveSaliencyd: d[{self.image_key!r}] has no 'filename_or_obj'; load it with LoadImaged")
        reference = nib.load(str(source))
        case = Path(str(source)).name
        for ext in (".nii.gz", ".nii"):
            case = case[: -len(ext)] if case.endswith(ext) else case
        maps = {"gradcam": d.get(self.keys[0]), "attention": d.get(self.keys[1])}
        ct = np.asarray(reference.dataobj, dtype=np.float32)
        seg = d.get(self.pred_key)
        if seg is not None:
            seg = torch.as_tensor(seg).detach().cpu()
            seg = seg.argmax(0) if seg.ndim == ct.ndim + 1 and seg.shape[0] > 1 else seg
            if tuple(seg.shape[-ct.ndim :]) != ct.shape:
                seg = None  # not on the input grid (not inverted): fall back to the maps' peak slices
        save_saliency(maps, ct, reference, self.output_dir, case, self.class_names, self.gate_names, segmentation=seg)
        return d
