# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Hostile archives and a user's trained copy (issue 12, items 1, 2, 12 and 17): ``download`` loses nothing.

* chained symbolic links, each lexically inside the bundle, that lead out of it: every link is refused;
* downloading a newer version over the user's trained copy moves that copy aside, never deletes it;
* archives with too many members, too many bytes or a zip-bomb ratio: refused from the central directory,
  before anything is extracted;
* an archive naming a member twice: a clear message, not a raw ``FileExistsError``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest

from tests.zoo_helpers import index_for_zip, make_fake_bundle, write_zip
from tlk_components.zoo.download import (
    DownloadError,
    check_archive,
    download_bundle,
    download_cmd,
    extract_bundle,
    install_bundle,
)
from tlk_components.zoo.package import package_bundle

NAME = "fake_mlp_classification"
META = {f"{NAME}/configs/metadata.json": b'{"version": "0.1.0"}'}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_chained_symlinks_leading_out_of_the_bundle_are_refused(tmp_path):
    """Item 1: ``s1 -> .``, ``s2 -> s1/..``, ... each looks inside the bundle, together they leave it."""
    outside = tmp_path / "victim.txt"
    outside.write_text("precious")
    links = {f"{NAME}/s1": "."}
    for i in range(2, 12):
        links[f"{NAME}/s{i}"] = f"s{i - 1}/.."
    links[f"{NAME}/eval"] = f"s11{outside}"  # resolves, through the chain, to the file outside
    (tmp_path / "pub").mkdir()
    z = write_zip(tmp_path / "pub" / "evil.zip", META, links)
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError) as e:
        download_bundle(NAME, index_for_zip(z, NAME), dl)
    msg = str(e.value)
    assert "refusing to extract the archive" in msg and "regular files only" in msg
    for member in ("s1", "s2", "s11", "eval"):
        assert f"'{NAME}/{member}': symbolic link" in msg  # every link is named
    assert _listing(dl) == [] and outside.read_text() == "precious"


def test_devices_and_pipes_are_refused(tmp_path):
    path = tmp_path / "fifo.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{NAME}/configs/metadata.json", b'{"version": "0.1.0"}')
        info = zipfile.ZipInfo(f"{NAME}/pipe")
        info.create_system = 3
        info.external_attr = 0o010644 << 16  # S_IFIFO
        zf.writestr(info, b"")
    with zipfile.ZipFile(path) as zf, pytest.raises(DownloadError, match="'.*/pipe': not a regular file or folder"):
        check_archive(zf, NAME)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """Versions 0.5.9 and 0.5.10 of the fake bundle, trained, in one release folder."""
    root = tmp_path_factory.mktemp("zoo_release_safety")
    for version in ("0.5.9", "0.5.10"):
        package_bundle(make_fake_bundle(root / f"src_{version}", version=version, weights=True), root / "release")
    return root / "release"


def test_newer_version_keeps_the_users_trained_copy(release, tmp_path):
    """Item 2: the old copy (with the user's models/ and eval/) is moved aside, and the result says where."""
    dl = tmp_path / "dl"
    old = download_bundle(NAME, release, dl, version="0.5.9")
    (old / "models" / "model.pt").write_bytes(b"my trained weights")
    (old / "eval").mkdir()
    (old / "eval" / "metrics.json").write_text('{"accuracy": 0.99}')
    result = install_bundle(NAME, release, dl)
    assert result.version == "0.5.10" and result.path == dl / NAME
    assert result.backup == dl / f"{NAME}_v0.5.9_backup"
    assert (result.backup / "models" / "model.pt").read_bytes() == b"my trained weights"
    assert (result.backup / "eval" / "metrics.json").read_text() == '{"accuracy": 0.99}'
    assert json.loads((result.backup / "configs" / "metadata.json").read_text())["version"] == "0.5.9"
    assert not (dl / NAME / "eval").exists()
    # again: the earlier backup is kept too; the command line says where the previous copy went
    (dl / NAME / "eval").mkdir()
    text = download_cmd(NAME, str(release), str(dl), version="0.5.9")
    second = dl / f"{NAME}_v0.5.10_backup"
    assert f"was moved to {second}, not deleted" in text and (second / "eval").is_dir()
    text = download_cmd(NAME, str(release), str(dl), version="0.5.9")
    assert f"was moved to {dl / (NAME + '_v0.5.9_backup_2')}" in text
    assert (dl / f"{NAME}_v0.5.9_backup" / "eval" / "metrics.json").is_file()
    assert [p for p in _listing(dl) if p.startswith(".")] == []


def test_first_download_makes_no_backup(release, tmp_path):
    result = install_bundle(NAME, release, tmp_path / "dl")
    assert result.backup is None and _listing(tmp_path / "dl") == [NAME]


def test_too_many_members_refused_before_extraction(tmp_path):
    """Item 12: 10,001 members exceed the default limit; the message says how to raise it."""
    entries = dict(META)
    entries.update({f"{NAME}/data/{i}.txt": b"" for i in range(10_001)})
    (tmp_path / "pub").mkdir()
    z = write_zip(tmp_path / "pub" / "many.zip", entries)
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=r"holds 10002 members, more than the limit of 10000.*--max_members 10002"):
        download_bundle(NAME, index_for_zip(z, NAME), dl)
    assert _listing(dl) == []


def test_limits_are_overridable_by_keyword(tmp_path):
    entries = dict(META)
    entries.update({f"{NAME}/data/{i}.txt": b"x" * 1000 for i in range(5)})
    z = write_zip(tmp_path / "few.zip", entries)
    with pytest.raises(DownloadError, match=r"holds 6 members, more than the limit of 3"):
        extract_bundle(z, tmp_path / "a", NAME, max_members=3)
    with pytest.raises(DownloadError, match=r"unpack to .* \(5020 bytes\), more than the limit .*max_bytes=5020"):
        extract_bundle(z, tmp_path / "b", NAME, max_bytes=4000)
    assert _listing(tmp_path / "a") == [] and _listing(tmp_path / "b") == []
    path = extract_bundle(z, tmp_path / "c", NAME, max_members=6, max_bytes=5020)
    assert len(list((path / "data").iterdir())) == 5


def test_zip_bomb_ratio_refused_before_extraction(tmp_path):
    """Item 12: 80 MB of zeros in a zip of ~80 kB (ratio ~1000) is refused without decompressing it."""
    (tmp_path / "pub").mkdir()
    z = tmp_path / "pub" / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(f"{NAME}/configs/metadata.json", b'{"version": "0.1.0"}')
        with zf.open(f"{NAME}/models/model.pt", "w") as f:
            block = bytes(1 << 20)
            for _ in range(80):
                f.write(block)
    assert z.stat().st_size < 1 << 20
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=r"unpack to 80\.0 MiB \(ratio \d+, limit 200\): a zip bomb"):
        download_bundle(NAME, index_for_zip(z, NAME), dl)
    assert _listing(dl) == []


def test_duplicate_member_names_refused(tmp_path):
    """Item 17: the same name twice gave a raw FileExistsError; now a clear message naming the member."""
    (tmp_path / "pub").mkdir()
    z = tmp_path / "pub" / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's own "Duplicate name" warning while writing the hostile zip
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr(f"{NAME}/configs/metadata.json", b'{"version": "0.1.0"}')
            zf.writestr(f"{NAME}/LICENSE", b"first")
            zf.writestr(f"{NAME}/LICENSE", b"second")
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match=rf"'{NAME}/LICENSE': appears more than once in the archive"):
        download_bundle(NAME, index_for_zip(z, NAME), dl)
    assert _listing(dl) == []
    # a file that is also a folder of another member
    z2 = write_zip(tmp_path / "clash.zip", {**META, f"{NAME}/docs": b"x", f"{NAME}/docs/README.md": b"# hi"})
    with pytest.raises(DownloadError, match=rf"'{NAME}/docs': is a file and also the folder of other members"):
        extract_bundle(z2, tmp_path / "dl2", NAME)
