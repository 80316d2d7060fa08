# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk package``: deterministic zip, index entry, immutable released versions, refusal of unverified bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.zoo_helpers import make_fake_bundle, write_json
from tlk_components.utils.io import sha256_file
from tlk_components.zoo.large_files import fetch_large_files
from tlk_components.zoo.package import PackageError, package_bundle, weight_files

NAME = "fake_mlp_classification"


def _bundle_with_clutter(root: Path) -> Path:
    b = make_fake_bundle(root, weights=True)
    (b / "models" / "model.ts").write_bytes(b"torchscript stand-in")
    for rel in ("demo_data/img_0.png", "eval/metrics.json", "runs/events.out", "configs/__pycache__/x.pyc"):
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_bytes(b"x")
    (b / ".DS_Store").write_bytes(b"x")
    (b / "models" / ".model.pt.123.tmp").write_bytes(b"half-written")
    (b / "models" / "model.pt.bak-20261130-120000").write_bytes(b"an earlier run's model")
    (b / "models" / ".lock").write_bytes(b"pid 1")
    return b


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def test_zip_layout_and_index_entry(tmp_path):
    b = _bundle_with_clutter(tmp_path / "src")
    out = tmp_path / "release"
    entry = package_bundle(b, out)
    zip_path = out / f"{NAME}_v0.1.0.zip"
    assert entry["zip"] == str(zip_path) and zip_path.is_file()
    names = zipfile.ZipFile(zip_path).namelist()
    assert all(n.startswith(f"{NAME}/") for n in names)
    assert f"{NAME}/models/model.pt" in names and f"{NAME}/models/model.ts" in names
    assert f"{NAME}/configs/metadata.json" in names and f"{NAME}/docs/README.md" in names
    excluded_names = ("/demo_data/", "/eval/", "/runs/", "/__pycache__/", "checkpoint_last.pt", ".DS_Store", ".tmp")
    for excluded in (*excluded_names, ".bak-", ".lock"):
        assert not any(excluded in n for n in names), excluded
    assert names == sorted(names)
    index = json.loads((out / "model_info.json").read_text())
    assert list(index) == [f"{NAME}_v0.1.0"]
    e = index[f"{NAME}_v0.1.0"]
    assert e["name"] == NAME and e["version"] == "0.1.0"
    assert e["sha256"] == sha256_file(zip_path) and e["size"] == zip_path.stat().st_size
    assert e["source"] == zip_path.resolve().as_uri()
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    assert e["monai_version"] == meta["monai_version"] and e["pytorch_version"] == meta["pytorch_version"]
    assert e["untrained"] is False
    assert e["weights_sha256"] == sha256_file(b / "models" / "model.pt")
    assert e["weights"] == {"models/model.pt": e["weights_sha256"]}
    assert _leftovers(out) == []


def test_same_inputs_give_same_bytes(tmp_path):
    b = _bundle_with_clutter(tmp_path / "src")
    first = package_bundle(b, tmp_path / "r1")
    # new timestamps, other permissions and a new checkpoint_last must not change the archive
    later = time.time() + 3600
    for p in b.rglob("*"):
        os.utime(p, (later, later))
    os.chmod(b / "LICENSE", 0o600)
    (b / "models" / "checkpoint_last.pt").write_bytes(b"another epoch")
    second = package_bundle(b, tmp_path / "r2")
    assert Path(first["zip"]).read_bytes() == Path(second["zip"]).read_bytes()
    assert first["sha256"] == second["sha256"]
    info = zipfile.ZipFile(second["zip"]).getinfo(f"{NAME}/LICENSE")
    assert info.date_time == (1980, 1, 1, 0, 0, 0) and (info.external_attr >> 16) & 0o777 == 0o644
    # a content change changes the bytes
    (b / "docs" / "README.md").write_text((b / "docs" / "README.md").read_text() + "\nmore\n")
    assert package_bundle(b, tmp_path / "r3")["sha256"] != first["sha256"]


def test_base_url_sets_source(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    e = package_bundle(b, tmp_path / "r", base_url="https://zoo.example.org/models/")
    assert e["source"] == f"https://zoo.example.org/models/{NAME}_v0.1.0.zip"
    assert package_bundle(b, tmp_path / "rel", base_url=".")["source"] == f"{NAME}_v0.1.0.zip"


def test_released_version_is_immutable_until_bumped(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    out = tmp_path / "release"
    first = package_bundle(b, out)
    assert package_bundle(b, out)["sha256"] == first["sha256"]  # unchanged contents: idempotent
    zip_before, index_before = Path(first["zip"]).read_bytes(), (out / "model_info.json").read_bytes()
    readme = b / "docs" / "README.md"
    readme.write_text(readme.read_text() + "\nImproved docs.\n")
    with pytest.raises(PackageError, match=r"already released.*bump 'version'.*changelog"):
        package_bundle(b, out)
    assert Path(first["zip"]).read_bytes() == zip_before
    assert (out / "model_info.json").read_bytes() == index_before
    assert _leftovers(out) == []
    meta_p = b / "configs" / "metadata.json"
    meta = json.loads(meta_p.read_text())
    meta["version"] = "0.1.1"
    meta["changelog"]["0.1.1"] = "improve the README"
    write_json(meta_p, meta)
    package_bundle(b, out)
    index = json.loads((out / "model_info.json").read_text())
    assert sorted(index) == [f"{NAME}_v0.1.0", f"{NAME}_v0.1.1"]
    assert index[f"{NAME}_v0.1.0"]["sha256"] == first["sha256"]


def test_ill_package_refuses_bundle_failing_verification(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    meta_p = b / "configs" / "metadata.json"
    meta = json.loads(meta_p.read_text())
    del meta["authors"]
    meta["version"] = "1.0"
    write_json(meta_p, meta)
    out = tmp_path / "release"
    with pytest.raises(
        PackageError, match=r"(?s)refusing to package.*'authors' is a required property.*'1.0' does not match"
    ):
        package_bundle(b, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_ill_package_refuses_corrupt_index(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    out = tmp_path / "release"
    out.mkdir()
    (out / "model_info.json").write_text("[1, 2")
    with pytest.raises(PackageError, match="not a JSON zoo index"):
        package_bundle(b, out)
    assert (out / "model_info.json").read_text() == "[1, 2"
    assert not list(out.glob("*.zip")) and _leftovers(out) == []


def test_ill_cli_package_unverified_exits_2(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    (b / "LICENSE").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "tlk_components", "package", str(b), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TLK_NUM_THREADS="1"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "refusing to package" in proc.stderr and "LICENSE: missing" in proc.stderr


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlk_components", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=dict(os.environ, TLK_NUM_THREADS="1"),
    )


def test_ill_untrained_bundle_is_refused_with_the_fix(tmp_path):
    b = make_fake_bundle(tmp_path / "src")  # passes verification, but has no models/model.pt
    out = tmp_path / "release"
    with pytest.raises(PackageError) as e:
        package_bundle(b, out)
    text = str(e.value)
    assert f"refusing to package {NAME}: no trained weights: {b / 'models' / 'model.pt'} missing" in text
    assert f"Train it first (python -m monai.bundle run --config_file {b / 'configs' / 'train.json'}" in text
    assert "or pass --allow-untrained (allow_untrained=True) for a config-only release" in text
    assert not out.exists() or list(out.iterdir()) == []


def test_allow_untrained_is_recorded_in_the_index(tmp_path):
    b = make_fake_bundle(tmp_path / "src")
    out = tmp_path / "release"
    e = package_bundle(b, out, allow_untrained=True)
    assert e["untrained"] is True and e["weights_sha256"] is None and e["weights"] == {}
    index = json.loads((out / "model_info.json").read_text())
    assert index[f"{NAME}_v0.1.0"]["untrained"] is True
    assert not any("/models/" in n for n in zipfile.ZipFile(e["zip"]).namelist())
    # a trained release of the next version records its weights
    meta_p = b / "configs" / "metadata.json"
    meta = json.loads(meta_p.read_text())
    meta["version"] = "0.2.0"
    meta["changelog"]["0.2.0"] = "trained weights"
    write_json(meta_p, meta)
    trained = make_fake_bundle(tmp_path / "w", weights=True)
    (b / "models").mkdir()
    (b / "models" / "model.pt").write_bytes((trained / "models" / "model.pt").read_bytes())
    e2 = package_bundle(b, out)
    index = json.loads((out / "model_info.json").read_text())
    assert index[f"{NAME}_v0.2.0"]["untrained"] is False
    assert index[f"{NAME}_v0.2.0"]["weights_sha256"] == sha256_file(b / "models" / "model.pt") == e2["weights_sha256"]
    assert index[f"{NAME}_v0.1.0"]["untrained"] is True


def test_cli_package_untrained_refused_then_allowed(tmp_path):
    b = make_fake_bundle(tmp_path / "src")
    refused = _cli("package", str(b), "--out", str(tmp_path / "out"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no trained weights" in refused.stderr and "--allow-untrained" in refused.stderr
    ok = _cli("package", str(b), "--out", str(tmp_path / "out"), "--allow-untrained")
    assert ok.returncode == 0, ok.stderr
    assert "untrained (no weights)" in ok.stdout
    assert json.loads((tmp_path / "out" / "model_info.json").read_text())[f"{NAME}_v0.1.0"]["untrained"] is True


def test_weights_fetched_from_large_files_then_packaged(tmp_path):
    """Weights kept out of git: large_files.yml names them; fetch, then package a trained release."""
    b = make_fake_bundle(tmp_path / "src")
    hosted = make_fake_bundle(tmp_path / "host", weights=True) / "models" / "model.pt"
    (b / "large_files.yml").write_text(
        f"large_files:\n- path: models/model.pt\n  url: {hosted.as_uri()}\n"
        f"  hash_val: {sha256_file(hosted)}\n  hash_type: sha256\n"
    )
    with pytest.raises(PackageError, match=r"models/model.pt: listed in large_files.yml but absent"):
        package_bundle(b, tmp_path / "release")
    assert fetch_large_files(b) == [b / "models" / "model.pt"]
    e = package_bundle(b, tmp_path / "release")
    assert e["untrained"] is False and e["weights_sha256"] == sha256_file(hosted)
    names = zipfile.ZipFile(e["zip"]).namelist()
    assert f"{NAME}/large_files.yml" in names and f"{NAME}/models/model.pt" in names


@pytest.mark.parametrize(
    "text, match",
    [
        ("large_files:\n- path: ../outside.pt\n  url: https://x/y.pt\n", r"leaves the bundle folder"),
        ("large_files: [", r"large_files.yml: not valid YAML"),
    ],
)
def test_ill_package_refuses_bad_large_files(tmp_path, text, match):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    (b / "large_files.yml").write_text(text)
    with pytest.raises(PackageError, match=rf"(?s)refusing to package {NAME}:.*{match}"):
        package_bundle(b, tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_ill_package_refuses_weights_not_matching_large_files(tmp_path):
    b = make_fake_bundle(tmp_path / "src", weights=True)
    (b / "large_files.yml").write_text(
        f"large_files:\n- path: models/model.pt\n  url: https://x/y.pt\n  hash_val: '{'0' * 64}'\n"
    )
    with pytest.raises(PackageError, match=r"models/model.pt: sha256 is [0-9a-f]{64} but large_files.yml says 0{64}"):
        package_bundle(b, tmp_path / "release")


def test_weight_files_per_network(tmp_path):
    assert weight_files(tmp_path / "nothing") == {"network_def": "models/model.pt"}  # no inference.json: the default
    b = make_fake_bundle(tmp_path, weights=True)
    assert weight_files(b) == {"network_def": "models/model.pt"}
    # a bundle with two networks needs one weights file per network_def_<name>
    inference = json.loads((b / "configs" / "inference.json").read_text())
    net = inference.pop("network_def")
    inference.update(network_def_view0=net, network_def_view1=net)
    write_json(b / "configs" / "inference.json", inference)
    assert weight_files(b) == {
        "network_def_view0": "models/model_view0.pt",
        "network_def_view1": "models/model_view1.pt",
    }
    with pytest.raises(
        PackageError, match=r"no trained weights: .*models/model_view0.pt, .*models/model_view1.pt missing"
    ):
        package_bundle(b, tmp_path / "release")
