# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk download`` / ``tlk list --index``: every bad input of issue 7 gives a clear error and leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import monai
import pytest

from tests.zoo_helpers import make_fake_bundle, serve_dir, write_json, write_zip
from tlk_components.zoo.download import (
    DownloadError,
    download_bundle,
    index_entries,
    index_info,
    install_bundle,
    list_index,
    read_index,
    select_entry,
)
from tlk_components.zoo.package import package_bundle

NAME = "fake_mlp_classification"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A release folder with versions 0.5.9 and 0.5.10 of the fake bundle (sources relative to the index)."""
    root = tmp_path_factory.mktemp("zoo_release")
    for version in ("0.5.9", "0.5.10"):
        b = make_fake_bundle(root / f"src_{version}", version=version, weights=True)
        package_bundle(b, root / "release", base_url=".")
    return root / "release"


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _index_for(zip_path: Path, name: str = NAME, version: str = "0.1.0", **extra) -> Path:
    """An index next to ``zip_path`` whose entry carries the zip's real sha256 (so only the archive is at fault)."""
    entry = {
        "name": name,
        "version": version,
        "sha256": hashlib.sha256(zip_path.read_bytes()).hexdigest(),
        "source": zip_path.name,
        "monai_version": "1.0.0",
    }
    entry.update(extra)
    index = zip_path.parent / "model_info.json"
    index.write_text(json.dumps({f"{name}_v{version}": entry}))
    return index


def test_newest_version_by_numeric_order_from_plain_path(release, tmp_path):
    path = download_bundle(NAME, release / "model_info.json", tmp_path / "dl")
    assert path == tmp_path / "dl" / NAME
    assert json.loads((path / "configs" / "metadata.json").read_text())["version"] == "0.5.10"  # not "0.5.9"
    assert (path / "models" / "model.pt").is_file()
    assert _hidden(tmp_path / "dl") == []


def test_explicit_version_file_url_and_folder(release, tmp_path):
    p = download_bundle(NAME, (release / "model_info.json").as_uri(), tmp_path / "a", version="0.5.9")
    assert json.loads((p / "configs" / "metadata.json").read_text())["version"] == "0.5.9"
    p = download_bundle(NAME, str(release), tmp_path / "b")  # a folder means its model_info.json
    assert json.loads((p / "configs" / "metadata.json").read_text())["version"] == "0.5.10"


def test_download_over_http_and_list_index(release, tmp_path):
    with serve_dir(release) as url:
        listing = list_index(f"{url}/model_info.json")
        path = download_bundle(NAME, f"{url}/model_info.json", tmp_path / "dl", timeout=10)
    assert f"{NAME}" in listing and "0.5.10* (MONAI" in listing and "0.5.9 (MONAI" in listing
    assert listing.index("0.5.10") < listing.index("0.5.9")
    assert _contents(path) == _contents(download_bundle(NAME, release, tmp_path / "local"))


def test_select_entry_numeric_order_and_monai_compatibility():
    idx = {
        f"b_v{v}": {"source": "x", "sha256": "0" * 64, "monai_version": m, "pytorch_version": "2.0.0"}
        for v, m in [("0.5.9", "1.0.0"), ("0.5.10", "1.0.0"), ("0.10.0", "9.0.0"), ("0.9.1", "1.6.1rc1")]
    }
    entries = index_entries(idx)
    assert select_entry(entries, "b", monai_version="1.6.1")["version"] == "0.9.1"  # rc tag ignored: 1.6.1 <= 1.6.1
    assert select_entry(entries, "b", monai_version="1.5.0")["version"] == "0.5.10"  # not "0.5.9"
    assert select_entry(entries, "b", monai_version="9.0.0")["version"] == "0.10.0"  # others need MONAI 1.x
    assert select_entry(entries, "b", version="0.10.0", monai_version="1.5.0")["version"] == "0.10.0"
    with pytest.raises(
        DownloadError,
        match=r"no version of b works with the installed MONAI 0.9.0, torch [\d.]+: "
        r"0.10.0 \(needs MONAI 9.0.0, another major version\); 0.9.1 \(needs MONAI 1.6.1rc1, another major version\)"
        r".*pass --version VERSION to take one anyway",
    ):
        select_entry(entries, "b", monai_version="0.9.0")


def test_ill_wrong_sha256_extracts_nothing_and_keeps_old_copy(release, tmp_path):
    dl = tmp_path / "dl"
    old = download_bundle(NAME, release, dl, version="0.5.9")
    (old / "my_notes.txt").write_text("keep me")
    before = _contents(old)
    index = json.loads((release / "model_info.json").read_text())
    index[f"{NAME}_v0.5.10"]["sha256"] = "f" * 64
    index[f"{NAME}_v0.5.10"]["source"] = (release / f"{NAME}_v0.5.10.zip").as_uri()
    bad = tmp_path / "bad_index.json"
    bad.write_text(json.dumps(index))
    with pytest.raises(
        DownloadError,
        match=r"sha256 of .* is [0-9a-f]{64}, but the index says f{64}.*Nothing was extracted and the existing copy was kept",
    ):
        download_bundle(NAME, bad, dl)
    assert _contents(old) == before
    assert sorted(p.name for p in dl.iterdir()) == [NAME]


def test_ill_truncated_zip(release, tmp_path):
    src = tmp_path / "pub"
    src.mkdir()
    data = (release / f"{NAME}_v0.5.10.zip").read_bytes()
    (src / "trunc.zip").write_bytes(data[: len(data) // 2])
    index = _index_for(src / "trunc.zip", version="0.5.10")
    dl = tmp_path / "dl"
    old = download_bundle(NAME, release, dl, version="0.5.9")
    before = _contents(old)
    with pytest.raises(DownloadError, match=r"damaged or truncated \(BadZipFile"):
        download_bundle(NAME, index, dl)
    assert _contents(old) == before and _hidden(dl) == []


@pytest.mark.parametrize(
    "member, why",
    [
        (f"{NAME}/../evil.txt", "contains '..'"),
        ("/tmp/tlk_zoo_evil_abs.txt", "absolute path"),
        ("other_folder/evil.txt", "outside the top folder"),
    ],
)
def test_ill_archive_with_unsafe_paths(tmp_path, member, why):
    z = write_zip(
        tmp_path / "evil.zip",
        {f"{NAME}/configs/metadata.json": b'{"version": "0.1.0"}', member: b"owned"},
    )
    assert member in zipfile.ZipFile(z).namelist()  # the name is stored as given
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=rf"(?s)refusing to extract.*{member!r}.*{why}"):
        download_bundle(NAME, _index_for(z), dl)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/tlk_zoo_evil_abs.txt").exists()
    assert not (dl / NAME).exists() and _hidden(dl) == []


def test_ill_archive_with_symlink_leaving_the_folder(tmp_path):
    entries = {f"{NAME}/configs/metadata.json": b'{"version": "0.1.0"}', f"{NAME}/docs/README.md": b"# hi\n"}
    z = write_zip(tmp_path / "evil.zip", entries, symlinks={f"{NAME}/models/model.pt": "../../../../etc/passwd"})
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=r"symbolic link \(to '../../../../etc/passwd'\)"):
        download_bundle(NAME, _index_for(z), dl)
    assert not (dl / NAME).exists() and _hidden(dl) == []
    z2 = write_zip(tmp_path / "abs.zip", entries, symlinks={f"{NAME}/x": "/etc/passwd"})
    with pytest.raises(DownloadError, match="symbolic link"):
        download_bundle(NAME, _index_for(z2), dl)
    # every link is refused, also one that looks inside the bundle (a release holds regular files only; issue 12)
    z3 = write_zip(tmp_path / "ok.zip", entries, symlinks={f"{NAME}/README.md": "docs/README.md"})
    with pytest.raises(DownloadError, match="regular files only"):
        download_bundle(NAME, _index_for(z3), dl)
    assert not (dl / NAME).exists() and _hidden(dl) == []


def test_ill_unknown_bundle_lists_known(release, tmp_path):
    with pytest.raises(
        DownloadError,
        match=rf"bundle 'fake_mlp_clasification' is not in the index; it offers \['{NAME}'\]\. Did you mean '{NAME}'",
    ):
        download_bundle("fake_mlp_clasification", release, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_ill_unknown_version_lists_existing(release, tmp_path):
    with pytest.raises(
        DownloadError, match=r"has no version '0.6.0' in the index; existing versions: \['0.5.10', '0.5.9'\]"
    ):
        download_bundle(NAME, release, tmp_path / "dl", version="0.6.0")
    assert not (tmp_path / "dl").exists()


def test_ill_index_not_json(tmp_path):
    (tmp_path / "model_info.json").write_text("<html>404 Not Found</html>")
    with pytest.raises(DownloadError, match=r"index file://.*model_info.json is not JSON .*starts with '<html>404"):
        download_bundle(NAME, tmp_path / "model_info.json", tmp_path / "dl")
    with pytest.raises(DownloadError, match="is not JSON"):
        list_index(tmp_path)
    (tmp_path / "model_info.json").write_text("[1, 2]")
    with pytest.raises(DownloadError, match="expected a JSON object"):
        read_index(tmp_path)
    with pytest.raises(DownloadError, match="does not exist"):
        list_index(tmp_path / "missing.json")
    assert not (tmp_path / "dl").exists()


def test_ill_entry_without_sha256_is_refused(tmp_path):
    z = write_zip(tmp_path / "b.zip", {f"{NAME}/configs/metadata.json": b'{"version": "0.1.0"}'})
    index = _index_for(z, sha256="")
    with pytest.raises(DownloadError, match="no valid 'sha256'.*refusing to install an unverified archive"):
        download_bundle(NAME, index, tmp_path / "dl")


def test_ill_server_that_does_not_answer(tmp_path):
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel accepts connections; nobody ever replies
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/model_info.json"
    try:
        with pytest.raises(DownloadError, match=r"the server did not answer within 0.5 s"):
            download_bundle(NAME, url, tmp_path / "dl", timeout=0.5)
        with pytest.raises(DownloadError, match=r"did not answer within 0.5 s"):
            list_index(url, timeout=0.5)
    finally:
        silent.close()
    assert not (tmp_path / "dl").exists()


def test_ill_http_errors(release, tmp_path):
    with serve_dir(release) as url:
        with pytest.raises(DownloadError, match="HTTP 404"):
            list_index(f"{url}/nothing_here.json")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(DownloadError, match="cannot connect"):
        list_index(f"http://127.0.0.1:{port}/model_info.json", timeout=2)


def test_ill_cli_download_unknown_bundle_exits_2(release, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tlk_components", "download", "nope", "--index", str(release), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TLK_NUM_THREADS="1"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"bundle 'nope' is not in the index; it offers ['{NAME}']" in proc.stderr


def test_ill_archive_not_matching_the_index(tmp_path):
    z = write_zip(tmp_path / "b.zip", {f"{NAME}/configs/metadata.json": b'{"version": "0.2.0"}'})
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=r"metadata.json says version '0.2.0' but the index says '0.1.0'"):
        download_bundle(NAME, _index_for(z), dl)
    z = write_zip(tmp_path / "c.zip", {f"{NAME}/LICENSE": b"x"})
    with pytest.raises(DownloadError, match=rf"holds no {NAME}/configs/metadata.json: not a bundle"):
        download_bundle(NAME, _index_for(z), dl)
    assert sorted(dl.iterdir()) == []


@pytest.fixture(scope="module")
def future_release(tmp_path_factory) -> Path:
    """Versions 0.2.0 (built with the installed MONAI) and 0.3.0 (says it needs MONAI <major>.99.0).

    The index entry of 0.3.0 lacks monai_version/pytorch_version, so ``download`` must read them from the zip.
    """
    root = tmp_path_factory.mktemp("zoo_future")
    major = monai.__version__.split(".")[0]
    for version in ("0.2.0", "0.3.0"):
        b = make_fake_bundle(root / f"src_{version}", version=version, weights=True)
        if version == "0.3.0":
            meta_p = b / "configs" / "metadata.json"
            meta = json.loads(meta_p.read_text())
            meta["monai_version"] = f"{major}.99.0"
            write_json(meta_p, meta)
        package_bundle(b, root / "release", base_url=".")
    index_p = root / "release" / "model_info.json"
    index = json.loads(index_p.read_text())
    for k in ("monai_version", "pytorch_version"):
        del index[f"{NAME}_v0.3.0"][k]
    write_json(index_p, index)
    return root / "release"


def test_newest_compatible_version_skips_one_needing_a_future_monai(future_release, tmp_path):
    major = monai.__version__.split(".")[0]
    result = install_bundle(NAME, future_release, tmp_path / "dl")
    assert result.version == "0.2.0" and result.path == tmp_path / "dl" / NAME and result.warnings == []
    assert result.message.startswith("picked 0.2.0 (newest compatible with MONAI ")
    assert result.message.endswith(f"; skipped 0.3.0 (needs MONAI {major}.99.0)")
    assert json.loads((result.path / "configs" / "metadata.json").read_text())["version"] == "0.2.0"
    assert _hidden(tmp_path / "dl") == []  # the zip of 0.3.0 read for its requirements left nothing behind


def test_explicit_incompatible_version_downloads_with_a_warning(future_release, tmp_path):
    with pytest.warns(UserWarning, match=r"fake_mlp_classification 0.3.0 needs MONAI \d+.99.0, but MONAI"):
        path = download_bundle(NAME, future_release, tmp_path / "dl", version="0.3.0")
    assert json.loads((path / "configs" / "metadata.json").read_text())["version"] == "0.3.0"


def test_cli_download_says_which_version_and_why(future_release, tmp_path):
    major = monai.__version__.split(".")[0]
    proc = subprocess.run(
        [sys.executable, "-m", "tlk_components", "download", NAME, "--index", str(future_release)]
        + ["--dir", str(tmp_path / "dl")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TLK_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"downloaded {NAME} 0.2.0 (sha256 verified)" in proc.stdout
    assert f"skipped 0.3.0 (needs MONAI {major}.99.0)" in proc.stdout
    # the index alone does not say what 0.3.0 needs: `list` shows '?' and assumes it fits (download then checks the zip)
    listing = list_index(future_release)
    assert "0.3.0* (MONAI ?, torch ?)" in listing and "0.2.0 (MONAI" in listing


def test_list_index_marks_incompatible_and_untrained(tmp_path):
    b = make_fake_bundle(tmp_path / "src", version="0.1.0")
    package_bundle(b, tmp_path / "release", base_url=".", allow_untrained=True)
    index_p = tmp_path / "release" / "model_info.json"
    index = json.loads(index_p.read_text())
    future = dict(index[f"{NAME}_v0.1.0"], version="0.2.0", monai_version="99.0.0", untrained=False)
    index[f"{NAME}_v0.2.0"] = future
    write_json(index_p, index)
    listing = list_index(tmp_path / "release")
    assert "0.2.0 (MONAI 99.0.0, torch" in listing and "incompatible)" in listing
    assert "0.1.0* (MONAI" in listing and "untrained)" in listing
    rows = index_info(tmp_path / "release")
    assert [(r["version"], r["untrained"], r["compatible"], r["default"]) for r in rows] == [
        ("0.2.0", False, False, False),
        ("0.1.0", True, True, True),
    ]
