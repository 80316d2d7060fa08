# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Convert KiTS19 and AMOS22 into one raw MSD/nnU-Net-style layout, reoriented to RAS.

Output layout (per converted dataset)::

    out_dir/
      imagesTr/<case>.nii.gz   labelsTr/<case>.nii.gz   imagesTs/<case>.nii.gz (KiTS19 cases >= 210)
      dataset.json             MSD keys (labels, training, test) + "tlk_conversion": the original orientation,
                               affine, shape and source file of every case, so predictions can be put back

Label strategies (``label_strategy``):

* ``"amos15"`` (TLK's original): AMOS keeps its 15 organs; the network predicts them and "kidney" is the max of
  the right- and left-kidney channels at prediction time (:class:`~tlk_components.data.transforms.KidneyFromAmosd`).
* ``"kidney"``: AMOS right and left kidney merged into label 1, every other organ to background.

KiTS19 always becomes {0 background, 1 kidney}: the tumour (2) is merged into the kidney, as TLK's
``kits_convert_label.py`` did (the source never shows tumours). Both domains are reoriented with nibabel to the
closest canonical (RAS) axis order; :func:`from_ras` undoes it for a prediction.

Output folder rules (checked before anything is written):

* the output must not be the input folder, lie inside it, or contain it (``convert_amos22 A A`` would overwrite
  its own input);
* a new or empty output folder is written as is;
* an output folder holding an earlier conversion of the **same** kind (same source layout and label strategy) is
  **merged**: its cases and orientation records are kept, the new cases are added, and ``dataset.json`` lists both
  (``tlk_conversion.sources`` names every input folder). A case id present in both with a different orientation
  record (source file, affine, axis codes or shape) or a different role (training vs test) is a conflict: the conversion is
  refused before writing, listing the cases. Converting the same input again is a no-op rewrite;
* any other non-empty output folder (user data, a conversion of another dataset or label strategy) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from tlk_components.data.btcv import read_dataset_json
from tlk_components.data.kidney import (
    AMOS_CLASS_NAMES,
    KITS19_FIRST_TEST_CASE,
    amos22_label_file,
    is_amos_mri,
    kits19_case_file,
    resolve_layout,
    verify_amos22,
    verify_kits19,
)
from tlk_components.data.nifti_checks import load_nifti, save_nifti
from tlk_components.utils.errors import DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import look_up_option

__all__ = [
    "LABEL_STRATEGIES",
    "convert_amos22",
    "convert_kits19",
    "from_ras",
    "orientation_record",
    "restore_prediction",
    "to_ras",
]

LABEL_STRATEGIES = ("amos15", "kidney")


def to_ras(img: nib.Nifti1Image, data: np.ndarray | None = None) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """Reorient an image to the closest canonical (RAS) axis order, keeping its header and dtype.

    Args:
        img: the image as loaded.
        data: its voxel array if already read (saves a second read).

    Returns:
        (RAS image, orientation record ``{"axcodes", "affine", "shape"}`` of the original).
    """
    data = np.asanyarray(img.dataobj) if data is None else data
    ornt = io_orientation(img.affine)
    transform = ornt_transform(ornt, axcodes2ornt(("R", "A", "S")))
    out = np.ascontiguousarray(apply_orientation(data, transform))
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    header = img.header.copy()
    ras = nib.Nifti1Image(out, affine, header=header)
    ras.set_qform(affine, code=1)
    ras.set_sform(affine, code=1)
    return ras, orientation_record(img)


def orientation_record(img: nib.Nifti1Image) -> dict[str, Any]:
    """The facts needed to put a RAS array back: original axis codes, affine and shape."""
    return {
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
        "affine": np.round(np.asarray(img.affine, dtype=float), 6).tolist(),
        "shape": [int(v) for v in img.shape[:3]],
    }


def from_ras(data: np.ndarray, record: dict[str, Any], header: nib.Nifti1Header | None = None) -> nib.Nifti1Image:
    """Put an array on the RAS grid back into the original orientation of ``record``.

    Args:
        data: 3-D array in RAS axis order (e.g. a prediction on the converted image's grid).
        record: from :func:`to_ras` / ``dataset.json["tlk_conversion"]["cases"][case]``.
        header: header to copy (e.g. the original image's); its data type is set to ``data``'s.

    Returns:
        NIfTI image with the original affine and shape.

    Raises:
        DatasetError: the array's shape does not match the record (wrong case or not on the converted grid).
    """
    axcodes = tuple(record["axcodes"])
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    out = np.ascontiguousarray(apply_orientation(np.asarray(data), transform))
    if list(out.shape[:3]) != list(record["shape"]):
        raise DatasetError(
            f"prediction shape {tuple(data.shape)} (RAS) does not map onto the original shape {record['shape']} "
            f"({record['axcodes']}); predict on the converted image's grid (same case) before restoring"
        )
    affine = np.asarray(record["affine"], dtype=float)
    img = nib.Nifti1Image(out, affine, header=header.copy() if header is not None else None)
    img.set_data_dtype(out.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _write_case(img_path: Path, lbl_path: Path | None, out: Path, case: str, label_map: np.ndarray | None) -> dict:
    try:
        img, data = load_nifti(img_path)
    except ValueError as e:
        raise DatasetError(f"{case}: {e}") from None
    ras, record = to_ras(img, data)
    record["source_file"] = str(Path(img_path).resolve())
    if lbl_path is None:
        save_nifti(ras, out / "imagesTs" / f"{case}.nii.gz")
        return record
    save_nifti(ras, out / "imagesTr" / f"{case}.nii.gz")
    lbl, ldata = load_nifti(lbl_path)
    ldata = np.asarray(ldata).astype(np.int64)
    if label_map is not None:
        ldata = label_map[np.clip(ldata, 0, len(label_map) - 1)]
    lras, _ = to_ras(lbl, ldata.astype(np.uint8))
    lras.set_data_dtype(np.uint8)
    save_nifti(lras, out / "labelsTr" / f"{case}.nii.gz")
    return record


def _check_not_overlapping(src: Path, out: Path) -> None:
    """Refuse an output folder that is the input, lies inside it, or contains it."""
    s, o = src.resolve(), out.resolve()
    if o == s:
        raise DatasetError(
            f"output folder {out} is the input folder {src}: the conversion would overwrite its own input; "
            "pass a new or empty folder as OUT_DIR"
        )
    if o.is_relative_to(s):
        raise DatasetError(
            f"output folder {out} lies inside the input folder {src}: the converted files would mix with the "
            "input's; pass a folder outside the input as OUT_DIR"
        )
    if s.is_relative_to(o):
        raise DatasetError(
            f"input folder {src} lies inside the output folder {out}: the conversion would write over its own "
            "input's parent; pass a folder outside the input as OUT_DIR"
        )


def _case_name(entry: Any) -> str:
    path = entry.get("image", "") if isinstance(entry, dict) else str(entry)
    return Path(path).name.split(".nii")[0]


def _previous_conversion(out: Path, source_layout: str, label_strategy: str) -> dict[str, Any] | None:
    """An earlier conversion of the same kind in ``out`` (its dataset.json), None for a new or empty folder.

    Raises:
        DatasetError: ``out`` is a file, a non-empty folder that is not a conversion, or another kind of conversion.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DatasetError(f"output {out} is a file; pass a new or empty folder as OUT_DIR")
    if not any(out.iterdir()):
        return None
    meta = read_dataset_json(out) if (out / "dataset.json").is_file() else {}
    conv = meta.get("tlk_conversion")
    if not isinstance(conv, dict) or not isinstance(conv.get("cases"), dict):
        raise DatasetError(
            f"output folder {out} is not empty and holds no earlier conversion (no dataset.json with "
            "'tlk_conversion'); it may be other data, which the conversion would overwrite. Pass a new or empty "
            "folder as OUT_DIR (an interrupted conversion leaves no dataset.json: delete its folder and rerun)"
        )
    if conv.get("source_layout") != source_layout or conv.get("label_strategy") != label_strategy:
        raise DatasetError(
            f"output folder {out} holds a {conv.get('source_layout')} conversion with label_strategy "
            f"{conv.get('label_strategy')!r}; adding {source_layout} cases with label_strategy {label_strategy!r} "
            "would mix label conventions in one dataset.json. Pass another folder as OUT_DIR"
        )
    return meta


def _check_merge(previous: dict[str, Any] | None, planned: dict[str, tuple[Path, bool]], out: Path) -> None:
    """Refuse cases already in ``previous`` with another orientation record or another role (training/test)."""
    if previous is None:
        return
    records = previous["tlk_conversion"]["cases"]
    training = {_case_name(e) for e in previous.get("training", []) or []}
    conflicts = []
    for case, (img_path, labelled) in planned.items():
        if case not in records:
            continue
        old, new = records[case], orientation_record(nib.load(str(img_path)))
        same = (
            old.get("source_file", str(img_path.resolve())) == str(img_path.resolve())
            and old.get("axcodes") == new["axcodes"]
            and list(old.get("shape", [])) == new["shape"]
            and np.allclose(np.asarray(old.get("affine"), dtype=float), np.asarray(new["affine"]), atol=1e-4)
        )
        if not same:
            conflicts.append(
                f"{case}: already converted from another volume ({old.get('source_file', '?')}, "
                f"{old.get('axcodes')} {old.get('shape')}); here it is {img_path} ({new['axcodes']} {new['shape']})"
            )
        elif (case in training) != labelled:
            role = "training" if case in training else "test"
            conflicts.append(f"{case}: already converted as a {role} case; here it is the other")
    if conflicts:
        raise DatasetError(
            f"output folder {out} already holds {len(conflicts)} of these case ids with different data; "
            "rename the cases or pass another folder as OUT_DIR",
            conflicts,
        )


def _dataset_json(
    out: Path,
    name: str,
    labels: dict[int, str],
    training: list,
    test: list,
    conv: dict,
    previous: dict[str, Any] | None = None,
) -> None:
    source = conv.pop("source")
    if previous is not None:
        prev_conv = previous["tlk_conversion"]
        training = sorted({_case_name(e) for e in previous.get("training", []) or []} | set(training))
        test = sorted({_case_name(e) for e in previous.get("test", []) or []} | set(test))
        conv["cases"] = dict(sorted({**prev_conv["cases"], **conv["cases"]}.items()))
        sources = list(prev_conv.get("sources", []))
    else:
        sources = []
    conv["sources"] = sources + ([source] if source not in sources else [])
    atomic_write_json(
        out / "dataset.json",
        {
            "name": name,
            "description": f"{name} converted by tlk_components.data.convert (RAS, MSD layout)",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in labels.items()},
            "numTraining": len(training),
            "numTest": len(test),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in training],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test],
            "tlk_conversion": conv,
        },
    )


def convert_kits19(kits_dir: str, out_dir: str, label_strategy: str = "kidney") -> str:
    """Convert a KiTS19 folder (``case_NNNNN/imaging.nii.gz``, ``segmentation.nii.gz``) to the MSD layout.

    The dataset is verified first (every bad case listed). Labels become {0 background, 1 kidney} (tumour merged
    into kidney) under both strategies: KiTS19 has no other organ.

    Args:
        kits_dir: the KiTS19 folder (or a demo folder holding ``kits19/``).
        out_dir: output folder (created): new or empty, or an earlier KiTS19 conversion with the same
            ``label_strategy`` to merge into (see the module docstring); never the input, inside it or around it.
        label_strategy: ``"kidney"`` or ``"amos15"`` (recorded; the KiTS labels are the same).

    Returns:
        ``out_dir``.

    Raises:
        DatasetError: the KiTS19 folder fails verification, or ``out_dir`` is refused (input overlap, other data,
            another kind of conversion, or conflicting case ids); nothing is written then.
    """
    label_strategy = look_up_option("label_strategy", label_strategy, LABEL_STRATEGIES)
    base = resolve_layout(kits_dir).target
    out = Path(out_dir)
    _check_not_overlapping(base, out)
    verify_kits19(base).raise_if_bad()
    previous = _previous_conversion(out, "kits19", label_strategy)
    planned: dict[str, tuple[Path, bool]] = {}
    for case in sorted(p for p in base.glob("case_*") if p.is_dir()):
        seg = kits19_case_file(case, "segmentation")
        planned[case.name] = (
            kits19_case_file(case, "imaging"),
            int(case.name.split("_")[1]) < KITS19_FIRST_TEST_CASE and seg.is_file(),
        )
    _check_merge(previous, planned, out)
    training, test, records = [], [], {}
    tumour_to_kidney = np.array([0, 1, 1], dtype=np.int64)
    for name, (img, labelled) in planned.items():
        seg = kits19_case_file(img.parent, "segmentation")
        records[name] = _write_case(img, seg if labelled else None, out, name, tumour_to_kidney)
        (training if labelled else test).append(name)
    conv = {
        "source_layout": "kits19",
        "label_strategy": label_strategy,
        "tumour": "merged into kidney",
        "orientation": "RAS",
        "cases": records,
        "source": str(base.resolve()),
    }
    _dataset_json(out, "KiTS19-kidney", {0: "background", 1: "kidney"}, training, test, conv, previous)
    return str(out)


def convert_amos22(amos_dir: str, out_dir: str, label_strategy: str = "amos15") -> str:
    """Convert an AMOS22 folder (``imagesTr``, ``labelsTr``, ``dataset.json``) to the MSD layout in RAS.

    Args:
        amos_dir: the AMOS22 folder (or a demo folder holding ``amos22/``).
        out_dir: output folder (created): new or empty, or an earlier AMOS22 conversion with the same
            ``label_strategy`` to merge into (see the module docstring); never the input, inside it or around it.
        label_strategy: ``"amos15"`` (keep the 15 organs; default, TLK's choice) or ``"kidney"`` (right and
            left kidney -> 1, all else 0).

    Returns:
        ``out_dir``.

    Raises:
        DatasetError: the AMOS22 folder fails verification, or ``out_dir`` is refused (input overlap, other data,
            another kind of conversion, or conflicting case ids); nothing is written then.
    """
    label_strategy = look_up_option("label_strategy", label_strategy, LABEL_STRATEGIES)
    base = resolve_layout(amos_dir).source
    out = Path(out_dir)
    _check_not_overlapping(base, out)
    verify_amos22(base).raise_if_bad()
    previous = _previous_conversion(out, "amos22", label_strategy)
    if label_strategy == "kidney":
        label_map = np.zeros(len(AMOS_CLASS_NAMES), dtype=np.int64)
        label_map[[2, 3]] = 1
        labels = {0: "background", 1: "kidney"}
    else:
        label_map, labels = None, dict(AMOS_CLASS_NAMES)
    planned = {
        img.name.split(".nii")[0].removesuffix("_0000"): (img, True)
        for img in sorted((base / "imagesTr").glob("*.nii*"))
        if not is_amos_mri(img)  # the full AMOS22 release also holds MRI scans; this CT conversion leaves them out
    }
    _check_merge(previous, planned, out)
    training, records = [], {}
    for case, (img, _) in planned.items():
        records[case] = _write_case(img, amos22_label_file(base, img), out, case, label_map)
        training.append(case)
    conv = {
        "source_layout": "amos22",
        "label_strategy": label_strategy,
        "orientation": "RAS",
        "cases": records,
        "source_labels": read_dataset_json(base).get("labels", {}),
        "source": str(base.resolve()),
    }
    _dataset_json(out, f"AMOS22-{label_strategy}", labels, training, [], conv, previous)
    return str(out)


def restore_prediction(pred_file: str, converted_dir: str, out_file: str, case: str | None = None) -> str:
    """Write a prediction made on a converted (RAS) image back in the case's original orientation and affine.

    Args:
        pred_file: prediction NIfTI on the converted image's grid.
        converted_dir: the converted dataset (its dataset.json holds the orientation records).
        out_file: where to write the restored prediction.
        case: case id; default: the prediction's file name without ``.nii.gz`` and a trailing ``_seg``.

    Returns:
        ``out_file``.

    Raises:
        DatasetError: unknown case or a shape that does not fit.
    """
    records = read_dataset_json(converted_dir).get("tlk_conversion", {}).get("cases", {})
    name = case or Path(pred_file).name.split(".nii")[0].removesuffix("_seg")
    if name not in records:
        raise DatasetError(
            f"case {name!r} has no orientation record in {converted_dir}/dataset.json; "
            f"known cases: {sorted(records)[:5]}...; pass case=..."
        )
    img, data = load_nifti(pred_file)
    save_nifti(from_ras(np.asarray(data), records[name], header=img.header), out_file)
    return str(out_file)
