# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Workflow helpers of kidney_ct_da_segmentation: label-free target verification, priors, side-by-side Dice."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tlk_components.adaptation.kidney_da import (
    TargetDiceEvaluation,
    kidney_prior,
    prepare_domains,
    scaled_prior,
    with_labels,
)
from tlk_components.data import kidney
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(kidney.write_demo(tmp_path_factory.mktemp("kda") / "data", size="tiny", seed=0))


def test_label_free_verification_never_opens_target_labels(tiny: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    for seg in (data / "kits19").glob("case_*/segmentation.nii.gz"):
        seg.write_bytes(b"corrupt")
    src, tgt = kidney.source_dir(data), kidney.target_dir(data)
    assert prepare_domains(data, tmp_path / "demo", src, tgt, target_labels=False) == str(data)
    with pytest.raises(DatasetError) as err:
        prepare_domains(data, tmp_path / "demo", src, tgt, target_labels=True)
    assert all(f"case_0000{i}" in str(err.value) for i in range(4))  # every bad case is listed
    (data / "kits19" / "case_00001" / "imaging.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(DatasetError, match="case_00001"):
        prepare_domains(data, tmp_path / "demo", src, tgt, target_labels=False)


def test_kidney_prior_and_scaling(tiny: Path) -> None:
    prior = kidney_prior(kidney.amos22_datalist(kidney.source_dir(tiny)))
    assert prior[0] + prior[1] == pytest.approx(1.0) and 0.0 < prior[1] < 0.1
    assert scaled_prior(prior, 2.0)[1] == pytest.approx(2 * prior[1])
    with pytest.raises(DatasetError, match="kidney_prior"):
        kidney_prior([{"image": "x.nii.gz"}])
    with pytest.raises(ConfigError, match="kidney_scale"):
        scaled_prior(prior, 0.0)


class _Const(torch.nn.Module):
    """Predicts 'kidney' where the image is above a threshold (a stand-in network)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.t - x, x - self.t], 1)


def _case_on_disk(folder: Path, name: str) -> dict[str, str]:
    """A box 'kidney' (part of it tumour, label 2) on an LPS grid of 2 x 2 x 3 mm voxels, as NIfTI files."""
    data = np.zeros((12, 10, 8), np.float32)
    data[3:9, 2:8, 2:6] = 1.0
    lab = data.astype(np.uint8)
    lab[3:5, 2:8, 2:6] = 2
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, aff), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), folder / f"{name}_seg.nii.gz")
    return {"image": str(folder / f"{name}.nii.gz"), "label": str(folder / f"{name}_seg.nii.gz")}


def test_target_dice_evaluation_side_by_side_in_original_geometry(tmp_path: Path) -> None:
    """Predictions made on a reoriented, resampled grid are brought back to each image's own grid and scored
    against the label file as stored (kidney + tumour)."""
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd, Spacingd

    items = [_case_on_disk(tmp_path / "data", f"case_{i}") for i in range(2)]
    tf = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.0, 1.0, 1.5)),
        ]
    )
    net = _Const()
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"t": torch.tensor(0.5)}, good)
    torch.save({"t": torch.tensor(2.0)}, bad)  # predicts nothing
    ev = TargetDiceEvaluation(
        net,
        {"adapted": str(good), "source_only": str(bad), "oracle": str(tmp_path / "no.pt")},
        items,
        transforms=tf,
        inferer=lambda x, n: n(x),
        device="cpu",
        output_dir=tmp_path / "eval",
    )
    metrics = ev.run()
    assert metrics["target_mean_dice_kidney_adapted"] == pytest.approx(1.0)
    assert metrics["target_mean_dice_kidney_source_only"] == pytest.approx(0.0)
    assert "target_mean_dice_kidney_oracle" not in metrics  # missing checkpoints are skipped
    assert (tmp_path / "eval" / "per_case_dice.csv").is_file() and (tmp_path / "eval" / "dice_per_case.png").is_file()
    with pytest.raises(ConfigError, match="without 'label'"):
        TargetDiceEvaluation(net, {}, [{"image": "x"}], None, None, "cpu", tmp_path)
    # transforms that drop the metadata cannot be inverted: a clear error, not a wrong number
    flat = Compose([*tf.transforms, EnsureTyped("image", track_meta=False)])
    ev = TargetDiceEvaluation(net, {"adapted": str(good)}, items, flat, lambda x, n: n(x), "cpu", tmp_path / "e2")
    with pytest.raises(ConfigError, match="original geometry"):
        ev.run()


def test_with_labels_pairs_a_separate_labels_folder(tiny: Path, tmp_path: Path) -> None:
    items = kidney.kits19_datalist(kidney.target_dir(tiny), labels=False)
    labels = tmp_path / "labels"
    labels.mkdir()
    for item in items[:-1]:  # flat <case>.nii.gz layout; the last case gets no label
        case = Path(item["image"]).parent.name
        shutil.copy(Path(item["image"]).with_name("segmentation.nii.gz"), labels / f"{case}.nii.gz")
    last = Path(items[-1]["image"]).parent.name
    with pytest.raises(DatasetError, match=last):
        with_labels(items, labels)
    paired = with_labels(items[:-1], labels)
    assert [Path(d["label"]).name for d in paired] == [f"{Path(d['image']).parent.name}.nii.gz" for d in paired]
    assert with_labels(items, "") == items
    (labels / f"{Path(items[0]['image']).parent.name}.nii.gz").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=Path(items[0]["image"]).parent.name):
        with_labels(items[:-1], labels)


def test_intensity_alignment_undoes_a_linear_scanner_shift(tiny: Path, tmp_path: Path) -> None:
    import json

    import nibabel as nib
    import numpy as np

    from tlk_components.adaptation.intensity import IntensityAlignd, ensure_alignment

    src = kidney.amos22_datalist(kidney.source_dir(tiny))
    shifted = []
    for i, item in enumerate(src):  # the same anatomy, reconstructed as 1.2 x HU + 40
        img = nib.load(item["image"])
        arr = np.asarray(img.dataobj, dtype=np.float32)
        out = tmp_path / f"t{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.where(arr > -500, arr * 1.2 + 40, arr), img.affine), out)
        shifted.append({"image": str(out)})
    path = ensure_alignment(tmp_path / "align.json", src, shifted)
    params = json.loads(Path(path).read_text())
    # moment matching of the body voxels (> -500 HU in each domain) is approximate: tissue near the threshold (lung
    # edges, fat) enters one domain's body mask and not the other's, which biases the std ratio by a few percent
    assert params["scale"] == pytest.approx(1 / 1.2, rel=0.05) and params["shift"] == pytest.approx(-40 / 1.2, abs=5)
    x = IntensityAlignd("image", params_file=path)({"image": torch.tensor([160.0])})["image"]
    assert float(x) == pytest.approx(100.0, abs=3)
    assert (
        json.loads(Path(ensure_alignment(tmp_path / "off.json", src, shifted, enabled=False)).read_text())["scale"] == 1
    )
    with pytest.raises(ConfigError, match="unreadable"):
        IntensityAlignd("image", params_file=tmp_path / "missing.json")


def test_domain_folders_of_a_demo_folder_not_written_yet(tmp_path: Path) -> None:
    # configs evaluate source_dir/target_dir BEFORE the demo is written on first use: they must already point inside
    fresh = tmp_path / "fresh"
    assert kidney.source_dir(fresh) == str(fresh / "amos22") and kidney.target_dir(fresh) == str(fresh / "kits19")
    fresh.mkdir()
    assert kidney.source_dir(fresh) == str(fresh / "amos22")
    (fresh / "case_00000").mkdir()  # a plain KiTS19 folder stays itself
    assert kidney.target_dir(fresh) == str(fresh)
