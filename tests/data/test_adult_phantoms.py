# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the adult, real-geometry CT phantoms (tlk_components.data.adult_phantoms)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tlk_components.data.adult_phantoms import (
    AMOS_LABELS,
    AMOS_PROFILE,
    KITS_LABELS,
    KITS_PROFILE,
    SCAN_RANGES_MM,
    DomainProfile,
    case_grid,
    draw_case_geometry,
    generate_adult_phantom,
    write_case,
)
from tlk_components.data.phantoms import reorient_array
from tlk_components.utils.errors import ConfigError

PROFILES = (AMOS_PROFILE, KITS_PROFILE)
NOMINAL_KIDNEY = np.array([110.0, 60.0, 40.0])  # cranio-caudal, transverse, antero-posterior (mm)


def _ras(ph, data):
    out, aff = reorient_array(data, ph.affine, ph.axcodes, "RAS")
    return out, aff


def _world(aff, idx):
    return (aff @ np.c_[idx, np.ones(len(idx))].T)[:3].T


def test_deterministic_and_case_dependent():
    a = generate_adult_phantom(KITS_PROFILE, seed=2, case_index=1, size="tiny")
    b = generate_adult_phantom(KITS_PROFILE, seed=2, case_index=1, size="tiny")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.organs, b.organs)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.geometry == b.geometry
    c = draw_case_geometry(KITS_PROFILE, seed=2, case_index=2)
    assert c.kidney_centers != a.geometry.kidney_centers and c.body_width_mm != a.geometry.body_width_mm
    other_domain = draw_case_geometry(AMOS_PROFILE, seed=2, case_index=1)
    assert other_domain.body_width_mm != a.geometry.body_width_mm


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_real_size_grid_spacing_and_scan_ranges(profile):
    slices = []
    for i in range(24):
        g = draw_case_geometry(profile, seed=0, case_index=i)
        grid = case_grid(g, "real")
        lo, hi = profile.inplane_spacing_mm
        assert grid.shape[:2] == (512, 512)
        assert 0.6 <= g.spacing[0] == g.spacing[1] <= 0.98 and lo <= g.spacing[0] <= hi
        assert np.isclose(g.fov_mm, 512 * g.spacing[0]) and 307 <= g.fov_mm <= 502
        assert g.spacing[2] in {float(v) for v in profile.slice_spacing_probs}
        assert 16 <= grid.shape[2] <= profile.max_real_slices
        length = g.z_range_mm[1] - g.z_range_mm[0]
        assert np.isclose(grid.shape[2] * g.spacing[2], length)
        r_lo, r_hi = SCAN_RANGES_MM[g.scan_range]
        assert r_lo - 1e-6 <= length <= r_hi + g.spacing[2] + 60  # kidney ranges may widen to hold both kidneys
        assert 300 <= g.body_width_mm <= 380 and 200 <= g.body_depth_mm <= 280
        slices.append(grid.shape[2])
    assert max(slices) > 100  # real sizes span ~50-600 slices
    if profile is AMOS_PROFILE:
        assert all(1.25 <= s <= 5.0 for s in profile.slice_spacing_probs) and profile.inplane_spacing_mm == (0.6, 0.9)
    else:
        assert min(profile.slice_spacing_probs) == 0.5 and max(profile.slice_spacing_probs) == 5.0


def test_demo_and_tiny_shapes_spacing_and_orientation():
    for profile in PROFILES:
        for i in range(6):
            g = draw_case_geometry(profile, seed=1, case_index=i)
            demo, tiny = case_grid(g, "demo"), case_grid(g, "tiny")
            assert 64 <= demo.shape[0] == demo.shape[1] <= 112 and 25 <= demo.shape[2] <= 135
            assert demo.spacing == (4.5, 4.5, 5.0) and tiny.spacing == (9.0, 9.0, 10.0)
            assert tiny.shape[0] < demo.shape[0] and tiny.shape[2] < demo.shape[2]
    ph = generate_adult_phantom(KITS_PROFILE, seed=1, case_index=0, size="demo")
    assert nib.aff2axcodes(ph.affine) == ("I", "P", "L")
    assert ph.image.shape == case_grid(ph.geometry, "demo").disk_shape("IPL")
    assert ph.image.shape[0] < ph.image.shape[1]  # slices first, like KiTS19
    assert np.allclose(sorted(ph.spacing), sorted((4.5, 4.5, 5.0)))
    am = generate_adult_phantom(AMOS_PROFILE, seed=1, case_index=0, size="tiny")
    assert nib.aff2axcodes(am.affine) == ("L", "P", "S") and am.image.dtype == np.float32
    custom = generate_adult_phantom(AMOS_PROFILE, seed=1, case_index=0, size="demo", spacing=(6.0, 6.0, 7.0))
    assert np.allclose(sorted(custom.spacing), [6.0, 6.0, 7.0])


def test_kidney_geometry_ranges():
    for profile in PROFILES:
        for i in range(16):
            g = draw_case_geometry(profile, seed=3, case_index=i)
            ox, oy = g.body_center_mm
            z_lo, z_hi = g.z_range_mm
            for name in ("right_kidney", "left_kidney"):
                size = np.array(g.kidney_size_mm[name])
                assert np.all(np.abs(size / NOMINAL_KIDNEY - 1) <= 0.15 + 1e-9), (name, size)
                x, y, z = g.kidney_centers[name]
                assert 40 <= abs(x - ox) <= 110
                assert (x - ox > 0) == (name == "right_kidney")  # RAS: patient right is +x
                assert y < oy  # posterior half of the body
                assert z_lo + 40 < z < z_hi - 40
            drop = g.kidney_centers["left_kidney"][2] - g.kidney_centers["right_kidney"][2]
            assert 10 * 0.9 - 1e-6 <= drop <= 20 * 1.1 + 1e-6  # right kidney lower


def test_rendered_kidneys_inside_scan_and_plausible():
    for i in range(3):
        ph = generate_adult_phantom(AMOS_PROFILE, seed=4, case_index=i, size="demo")
        lab, aff = _ras(ph, ph.labels(AMOS_LABELS))
        g = ph.geometry
        for value, name in ((2, "right_kidney"), (3, "left_kidney")):
            idx = np.argwhere(lab == value)
            assert len(idx) > 0, f"{name} missing in case {i}"
            assert idx[:, 2].min() > 0 and idx[:, 2].max() < lab.shape[2] - 1  # whole kidney inside the scan
            pts = _world(aff, idx)
            centre = pts.mean(axis=0)
            assert np.linalg.norm(centre - np.array(g.kidney_centers[name])) < 2 * 5.0  # within 2 demo voxels
            ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
            lengths = 2 * np.sqrt(5 * ev)  # a solid ellipsoid of semi-axis a has variance a^2 / 5
            expected = np.array(g.kidney_size_mm[name])
            assert np.all(np.abs(lengths / expected - 1) < 0.25), (lengths, expected)
        # liver on the patient's right, spleen on the left (RAS)
        assert np.argwhere(lab == 6)[:, 0].mean() > np.argwhere(lab == 1)[:, 0].mean()
        assert set(np.unique(lab)) >= {1, 2, 3, 6, 8, 9}


def test_field_of_view_changes_the_kidney_prior():
    def share(profile, i, scan_range=None):
        ph = generate_adult_phantom(profile, seed=5, case_index=i, size="tiny", scan_range=scan_range)
        return float((ph.labels(KITS_LABELS) > 0).mean())

    abdomen = share(AMOS_PROFILE, 0, "abdomen")
    cap = share(AMOS_PROFILE, 0, "chest_abdomen_pelvis")
    assert abdomen > 1.5 * cap > 0
    g_a = draw_case_geometry(AMOS_PROFILE, 5, 0, scan_range="abdomen")
    g_c = draw_case_geometry(AMOS_PROFILE, 5, 0, scan_range="chest_abdomen_pelvis")
    assert g_a.kidney_centers == g_c.kidney_centers  # same patient, other field of view
    amos = np.mean([share(AMOS_PROFILE, i) for i in range(6)])
    kits = np.mean([share(KITS_PROFILE, i) for i in range(6)])
    assert kits > 1.2 * amos


def test_tumours_in_kits_only_and_contrast_phase():
    for i in range(4):
        k = generate_adult_phantom(KITS_PROFILE, seed=6, case_index=i, size="tiny")
        assert (k.labels(KITS_LABELS) == 2).sum() > 0 and len(k.geometry.tumours) >= 1
        a = generate_adult_phantom(AMOS_PROFILE, seed=6, case_index=i, size="tiny")
        assert (a.labels(KITS_LABELS) == 2).sum() == 0 and a.geometry.tumours == ()
    art = draw_case_geometry(KITS_PROFILE, 6, 0, phase="arterial")
    port = draw_case_geometry(KITS_PROFILE, 6, 0, phase="portal")
    assert art.hu["kidney"] - art.hu["kidney_medulla"] > 60  # cortico-medullary differentiation
    assert art.hu["aorta"] > port.hu["aorta"] and port.hu["liver"] > art.hu["liver"]
    phases = {draw_case_geometry(AMOS_PROFILE, 0, i).phase for i in range(30)}
    assert "portal" in phases and len(phases) >= 2
    # rendered: bright kidney, air outside the body, padding outside the reconstruction circle
    ph = generate_adult_phantom(KITS_PROFILE, seed=6, case_index=0, size="demo", phase="arterial")
    lab = ph.labels(AMOS_LABELS)
    assert ph.image[(lab == 2) | (lab == 3)].mean() > ph.image[lab == 6].mean() + 30
    assert ph.image.min() < -900


def test_demo_shows_the_real_anatomy():
    g = draw_case_geometry(KITS_PROFILE, seed=7, case_index=0, scan_range="kidney")
    real, demo = case_grid(g, "real"), case_grid(g, "demo")
    for grid in (real, demo):  # same field of view, within half a voxel at each end
        lo = grid.affine[:3, 3] - np.array(grid.spacing) / 2
        hi = lo + np.array(grid.shape) * np.array(grid.spacing)
        assert np.all(
            np.abs(lo - np.array([-g.fov_mm / 2, -g.fov_mm / 2, g.z_range_mm[0]])) <= np.array(grid.spacing) / 2 + 1e-6
        )
        assert np.all(
            np.abs(hi - np.array([g.fov_mm / 2, g.fov_mm / 2, g.z_range_mm[1]])) <= np.array(grid.spacing) / 2 + 1e-6
        )
    for centre in g.kidney_centers.values():
        for grid in (real, demo):
            v = grid.world_to_voxel(centre)
            back = grid.affine @ np.array([*np.round(v), 1.0])
            assert np.all(np.abs(back[:3] - np.array(centre)) <= np.array(grid.spacing) / 2 + 1e-6)
            assert np.all((v > 0) & (v < np.array(grid.shape) - 1))
    # the same case rendered at demo and at a finer spacing: same kidney volume (mm^3) and centre (mm)
    coarse = generate_adult_phantom(KITS_PROFILE, seed=7, case_index=0, size="demo", scan_range="kidney")
    fine = generate_adult_phantom(
        KITS_PROFILE, seed=7, case_index=0, size="demo", spacing=(2.0, 2.0, 2.5), scan_range="kidney"
    )
    assert coarse.geometry == fine.geometry == g
    stats = []
    for ph in (coarse, fine):
        lab, aff = _ras(ph, ph.labels(KITS_LABELS))
        idx = np.argwhere(lab > 0)
        stats.append(((lab > 0).sum() * np.prod(ph.spacing), _world(aff, idx).mean(axis=0)))
    assert abs(stats[0][0] / stats[1][0] - 1) < 0.12
    assert np.linalg.norm(stats[0][1] - stats[1][1]) < 4.0


def test_write_case_roundtrip(tmp_path):
    ph = generate_adult_phantom(KITS_PROFILE, seed=8, case_index=0, size="tiny")
    p_img, p_lab = write_case(
        tmp_path / "case" / "imaging.nii.gz", tmp_path / "case" / "segmentation.nii.gz", ph, KITS_LABELS
    )
    img, lab = nib.load(p_img), nib.load(p_lab)
    assert img.shape == ph.image.shape and np.allclose(img.affine, ph.affine)
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2}
    assert np.allclose(img.header.get_zooms(), ph.spacing)
    only_img, none = write_case(tmp_path / "test.nii.gz", None, ph)
    assert only_img.exists() and none is None
    with pytest.raises(ConfigError, match="unknown structure"):
        write_case(tmp_path / "x.nii.gz", tmp_path / "y.nii.gz", ph, {"lungs": 1})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": "huge"}, "size"),
        ({"seed": -1}, "seed"),
        ({"case_index": 1.5}, "case_index"),
        ({"spacing": (0.0, 1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"size": "real", "spacing": (1.0, 1.0, 1.0)}, "spacing"),
        ({"scan_range": "legs"}, "scan_range"),
        ({"phase": "venous"}, "phase"),
        ({"profile": "amos"}, "profile"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, name):
    args = {"profile": AMOS_PROFILE, "seed": 0, "case_index": 0, "size": "tiny", **kwargs}
    with pytest.raises(ConfigError, match=name):
        generate_adult_phantom(**args)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"phase_probs": {"venous": 1.0}}, "phase_probs"),
        ({"scan_range_probs": {}}, "scan_range_probs"),
        ({"inplane_spacing_mm": (0.9, 0.6)}, "inplane_spacing_mm"),
        ({"slice_spacing_probs": {0.0: 1.0}}, "slice_spacing_probs"),
        ({"tumours": (2, 1)}, "tumours"),
        ({"axcodes": "XYZ"}, "axcodes"),
        ({"noise_std_hu": (-1.0, 5.0)}, "noise_std_hu"),
        ({"max_real_slices": 4}, "max_real_slices"),
    ],
)
def test_bad_profile_raises_config_error(change, name):
    args = {"name": "x", "phase_probs": {"portal": 1.0}, "scan_range_probs": {"abdomen": 1.0}, **change}
    with pytest.raises(ConfigError, match=name):
        DomainProfile(**args)
