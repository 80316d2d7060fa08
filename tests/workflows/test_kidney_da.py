# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Workflow helpers of kidney_ct_da_segmentation: label-free target verification, priors, side-by-side Dice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tlk_components.data import kidney
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.workflows.kidney_da import (
    TargetDiceEvaluation,
    case_scores,
    patch_label_share,
    patch_size_prior,
    prepare_domains,
    scaled_prior,
    with_labels,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(kidney.write_demo(tmp_path_factory.mktemp("kda") / "data", size="tiny", seed=0))


def test_label_free_verification_never_opens_target_labels(tiny: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    for seg in (data / "kits19").glob("case_*/segmentation.nii.gz"):
        seg.write_bytes(b"corrupt")
    layout = kidney.resolve_layout(data)
    assert prepare_domains(layout, tmp_path / "demo", target_labels=False) is layout
    with pytest.raises(DatasetError) as err:
        prepare_domains(layout, tmp_path / "demo", target_labels=True)
    assert all(f"case_0000{i}" in str(err.value) for i in range(4))  # every bad case is listed
    (data / "kits19" / "case_00001" / "imaging.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(DatasetError, match="case_00001"):
        prepare_domains(layout, tmp_path / "demo", target_labels=False)


def test_patch_label_share_equals_brute_force_over_patch_positions() -> None:
    g = np.random.default_rng(0)
    label = (g.random((9, 7, 5)) < 0.2).astype(np.uint8)
    patch = (4, 3, 5)
    shares = [
        label[x : x + 4, y : y + 3, z : z + 5].mean()
        for x in range(9 - 4 + 1)
        for y in range(7 - 3 + 1)
        for z in range(1)
    ]
    assert patch_label_share(label[None], patch) == pytest.approx(float(np.mean(shares)), rel=1e-12)
    # an interior object weighs more than its voxel share, a border one less
    centre = np.zeros((12, 12, 12), np.uint8)
    centre[5:7, 5:7, 5:7] = 1
    border = np.roll(centre, 6, axis=0)
    assert patch_label_share(centre, (6, 6, 6)) > centre.mean() > patch_label_share(border, (6, 6, 6))
    with pytest.raises(ValueError, match="patch_size"):
        patch_label_share(centre, (6, 6))


def test_patch_size_prior_is_cached_and_scaled(tiny: Path, tmp_path: Path) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapLabelValued

    items = kidney.amos22_datalist(kidney.resolve_layout(tiny).source)
    pre = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            MapLabelValued("label", list(range(16)), [0, 0, 1, 1] + [0] * 12),
        ]
    )
    f = tmp_path / "size_prior.json"
    prior = patch_size_prior(f, items, pre, (8, 8, 8))
    expected = np.mean([patch_label_share(pre(dict(d))["label"], (8, 8, 8)) for d in items])
    assert prior[1] == pytest.approx(expected) and sum(prior) == pytest.approx(1.0) and 0.0 < prior[1] < 0.2
    assert patch_size_prior(f, items, None, (8, 8, 8)) == prior  # read back, preprocessing not run again
    assert patch_size_prior(f, items, pre, (4, 4, 4)) != prior  # another patch size recomputes
    assert scaled_prior(prior, 2.0)[1] == pytest.approx(2 * prior[1])
    with pytest.raises(DatasetError, match="no labelled case"):
        patch_size_prior(tmp_path / "p2.json", [{"image": "x.nii.gz"}], pre, (8, 8, 8))
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
    # the labels hold a tumour: parenchyma Dice and tumour recall beside the composite
    assert metrics["target_mean_dice_kidney_parenchyma_adapted"] == pytest.approx(1.0)
    assert metrics["target_tumour_recall_adapted"] == pytest.approx(1.0)
    assert metrics["target_tumour_recall_source_only"] == pytest.approx(0.0)
    assert metrics["n_cases_with_tumour"] == 2
    assert (tmp_path / "eval" / "per_case_dice.csv").is_file() and (tmp_path / "eval" / "dice_per_case.png").is_file()
    with pytest.raises(ConfigError, match="without 'label'"):
        TargetDiceEvaluation(net, {}, [{"image": "x"}], None, None, "cpu", tmp_path)
    # transforms that drop the metadata cannot be inverted: a clear error, not a wrong number
    flat = Compose([*tf.transforms, EnsureTyped("image", track_meta=False)])
    ev = TargetDiceEvaluation(net, {"adapted": str(good)}, items, flat, lambda x, n: n(x), "cpu", tmp_path / "e2")
    with pytest.raises(ConfigError, match="original geometry"):
        ev.run()


def test_case_scores_split_the_composite_into_parenchyma_and_tumour() -> None:
    label = torch.zeros(10, 10, 10, dtype=torch.uint8)
    label[2:6, 2:6, 2:6] = 1  # 64 parenchyma voxels
    label[6:8, 2:6, 2:6] = 2  # 32 tumour voxels
    parenchyma_only = label == 1
    s = case_scores(parenchyma_only, label)
    assert s.dice == pytest.approx(2 * 64 / (64 + 96))
    assert s.parenchyma_dice == pytest.approx(1.0) and s.tumour_recall == pytest.approx(0.0)
    half_tumour = label.clone()
    half_tumour[7:8] = 0  # 16 of the 32 tumour voxels missed, parenchyma complete
    s = case_scores(half_tumour, label)
    assert s.dice == pytest.approx(2 * 80 / (80 + 96)) and s.tumour_recall == pytest.approx(0.5)
    assert s.parenchyma_dice == pytest.approx(1.0)
    no_tumour = (label == 1).to(torch.uint8)  # AMOS-style label: composite = parenchyma, no recall
    s = case_scores(no_tumour, no_tumour)
    assert s.dice == s.parenchyma_dice == pytest.approx(1.0) and s.tumour_recall is None
    with pytest.raises(ValueError, match="shape"):
        case_scores(label[:5], label)


def test_prior_matched_threshold_predicts_the_share_of_the_body(tmp_path: Path) -> None:
    """foreground_shares: each case's kidney is the top share of its body voxels by kidney probability, whatever the
    argmax says (here the network's argmax predicts nothing)."""
    items = [_case_on_disk(tmp_path / "data", "case_0")]
    img = nib.load(items[0]["image"])
    arr = np.asarray(img.dataobj).copy()
    arr[arr == 0] = -1000.0  # air outside a body slab
    arr[:, :, 0:1] = np.where(arr[:, :, 0:1] < 0, -100.0, arr[:, :, 0:1])
    nib.save(nib.Nifti1Image(arr, img.affine), items[0]["image"])
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    tf = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    w = tmp_path / "w.pt"
    torch.save({"t": torch.tensor(5.0)}, w)  # argmax: nothing is kidney
    body = int((arr > -500).sum())
    kidney_share = float((arr == 1.0).sum()) / body
    ev = TargetDiceEvaluation(
        _Const(),
        {"argmax": str(w), "thr": str(w)},
        items,
        tf,
        lambda x, n: n(x),
        "cpu",
        tmp_path / "e",
        foreground_shares={"thr": kidney_share},
    )
    m = ev.run()
    assert m["target_mean_dice_kidney_argmax"] == pytest.approx(0.0)
    assert m["target_mean_dice_kidney_thr"] == pytest.approx(1.0)  # the brightest share of the body is the box
    with pytest.raises(ConfigError, match="foreground_shares"):
        TargetDiceEvaluation(_Const(), {}, items, tf, None, "cpu", tmp_path, foreground_shares={"thr": 0.0})


def test_quantile_matching_maps_target_body_percentiles_to_the_source(tmp_path: Path) -> None:
    import json

    from tlk_components.adaptation.intensity import QuantileMatchd, ensure_quantile_map

    g = np.random.default_rng(0)

    def volume(path: Path, values: np.ndarray) -> dict[str, str]:
        arr = np.full((20, 20, 10), -1000.0, np.float32)
        arr[5:15, 5:15, :] = values.reshape(10, 10, 10)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        return {"image": str(path)}

    src = [volume(tmp_path / "s.nii.gz", g.normal(40, 50, 1000))]
    tgt = [volume(tmp_path / "t.nii.gz", np.exp(g.normal(4, 0.5, 1000)) - 200)]  # another, skewed histogram
    path = ensure_quantile_map(tmp_path / "q.json", src, tgt)
    q = json.loads(Path(path).read_text())
    t = QuantileMatchd("image", path)
    x = torch.as_tensor(nib.load(tgt[0]["image"]).get_fdata(), dtype=torch.float32)
    y = t({"image": x})["image"].numpy()
    body = x.numpy() > -500
    # the percentiles are estimated from every 7th voxel: the mapped histogram matches the source's within noise
    assert np.percentile(y[body], 50) == pytest.approx(q["source"][50], abs=8.0)
    assert np.percentile(y[body], 90) == pytest.approx(q["source"][90], abs=8.0)
    assert abs(np.percentile(x.numpy()[body], 90) - q["source"][90]) > 30  # it was far off before
    assert (y[~body] == -1000).all()  # air untouched
    later = QuantileMatchd("image", tmp_path / "later.json")  # the file may be written after the transform is built
    with pytest.raises(ConfigError, match="later.json"):
        later({"image": x})
    (tmp_path / "bad.json").write_text(json.dumps({"source": [0, 1], "target": [1, 0]}))
    with pytest.raises(ConfigError, match="increasing"):
        QuantileMatchd("image", tmp_path / "bad.json")


def test_with_labels_pairs_a_separate_labels_folder(tiny: Path, tmp_path: Path) -> None:
    items = kidney.kits19_datalist(kidney.resolve_layout(tiny).target, labels=False)
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

    src = kidney.amos22_datalist(kidney.resolve_layout(tiny).source)
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
    # configs resolve the layout BEFORE the demo is written on first use: it must already point inside
    fresh = tmp_path / "fresh"
    layout = kidney.resolve_layout(fresh)
    assert layout.kind == "demo" and layout.source == fresh / "amos22" and layout.target == fresh / "kits19"
    assert (layout.source_kind, layout.target_kind, layout.target_given) == ("amos22", "kits19", True)
    fresh.mkdir()
    assert kidney.resolve_layout(fresh).source == fresh / "amos22"
    (fresh / "case_00000").mkdir()  # a plain KiTS19 folder stays itself, and is both domains
    layout = kidney.resolve_layout(fresh)
    assert (layout.kind, layout.target, layout.source, layout.target_given) == ("kits19", fresh, fresh, False)


def test_layout_finds_each_public_layout_and_the_explicit_folders(tmp_path: Path) -> None:
    clone = tmp_path / "kits19_clone"
    (clone / "data" / "case_00000").mkdir(parents=True)  # the official repository keeps the cases in data/
    layout = kidney.resolve_layout(clone)
    assert layout.kind == "kits19" and layout.target == clone / "data" and layout.target_kind == "kits19"
    btcv = tmp_path / "btcv"
    (btcv / "imagesTr").mkdir(parents=True)
    amos = tmp_path / "amos"
    amos.mkdir()
    (amos / "dataset.json").write_text(json.dumps({"labels": {str(k): v for k, v in kidney.AMOS_CLASS_NAMES.items()}}))
    assert kidney.resolve_layout(btcv).kind == "btcv" and kidney.resolve_layout(amos).kind == "amos22"
    layout = kidney.resolve_layout(tmp_path / "unused", source_dir=amos, target_dir=clone)
    assert (layout.source, layout.source_kind) == (amos, "amos22")
    assert (layout.target, layout.target_kind, layout.target_given) == (clone / "data", "kits19", True)
    with pytest.raises(DatasetError, match="target folder .*missing_target: does not exist; expected KiTS19"):
        kidney.resolve_layout(clone, target_dir=tmp_path / "missing_target").target_datalist()
    (clone / "data" / "case_00000").rmdir()
    with pytest.raises(DatasetError, match="no known layout"):
        kidney.resolve_layout(clone).source_datalist()


def test_prepare_domains_writes_the_demo_of_a_layout_resolved_before_it_existed(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    layout = kidney.resolve_layout(demo)
    assert prepare_domains(layout, demo, target_labels=False) is layout
    assert layout.source_datalist("all") and layout.target_datalist("all", labels=False)
