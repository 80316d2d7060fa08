# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``large_files.yml``: MONAI's format read with clear errors; hash-checked, atomic downloads (file://, HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.zoo_helpers import make_fake_bundle, serve_dir
from tlk_components.zoo.download import DownloadError, download_bundle, install_bundle
from tlk_components.zoo.large_files import (
    LargeFilesError,
    check_large_files,
    fetch_large_files,
    read_large_files,
)
from tlk_components.zoo.package import write_bundle_zip
from tlk_components.zoo.registry import list_bundles

NAME = "fake_mlp_classification"
WEIGHTS = b"trained weights stand-in " * 1000


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(path: str, url: str, hash_val: str | None = None, hash_type: str | None = None) -> str:
    text = f"- path: {path}\n  url: {url}\n"
    if hash_val is not None:
        text += f"  hash_val: '{hash_val}'\n"
    if hash_type is not None:
        text += f"  hash_type: {hash_type}\n"
    return text


def _bundle(tmp_path: Path, *entries: str, name: str = "b") -> Path:
    b = tmp_path / name
    (b / "models").mkdir(parents=True, exist_ok=True)
    (b / "large_files.yml").write_text("large_files:\n" + "".join(entries))
    return b


@pytest.fixture
def hosted(tmp_path) -> Path:
    """A folder standing in for a file server, with the weights in it."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "model_v1.pt").write_bytes(WEIGHTS)
    return host


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


# --------------------------------------------------------------------------------------------------------------
# reading


def test_repository_bundles_list_nothing_and_parse():
    for name, path in list_bundles().items():
        assert read_large_files(path) == [], name
        assert check_large_files(path) == [], name


def test_read_monai_format_yml_yaml_json(tmp_path, hosted):
    digest = _sha256(WEIGHTS)
    b = _bundle(
        tmp_path,
        _entry("models/model.pt", (hosted / "model_v1.pt").as_uri(), digest, "SHA256"),
        _entry("./models//model.ts", "https://zoo.example.org/m.ts", "d41d8cd98f00b204e9800998ecf8427e"),  # md5
        _entry("models/extra.bin", "../host/model_v1.pt"),  # relative to the yml, no hash
    )
    files = read_large_files(b)
    assert [f.path for f in files] == ["models/model.pt", "models/model.ts", "models/extra.bin"]
    assert files[0].hash_type == "sha256" and files[0].hash_val == digest
    assert files[1].hash_type == "md5" and files[1].url == "https://zoo.example.org/m.ts"
    assert files[2].hash_val is None and files[2].url == (hosted / "model_v1.pt").resolve().as_uri()
    assert files[0].where == f"{b / 'large_files.yml'}: large_files[0] (models/model.pt)"
    # the same list as .yaml and .json
    (b / "large_files.yml").rename(b / "large_files.yaml")
    assert [f.path for f in read_large_files(b)] == [f.path for f in files]
    (b / "large_files.yaml").unlink()
    (b / "large_files.json").write_text(json.dumps({"large_files": [{"path": "models/model.pt", "url": "x.pt"}]}))
    assert [f.path for f in read_large_files(b)] == ["models/model.pt"]


@pytest.mark.parametrize("text", ["large_files: []\n", "large_files:\n", "# comment\nlarge_files: []\n"])
def test_empty_lists(tmp_path, text):
    (tmp_path / "large_files.yml").write_text(text)
    assert read_large_files(tmp_path) == [] and fetch_large_files(tmp_path) == [] and check_large_files(tmp_path) == []
    assert read_large_files(tmp_path / "no_list_here") == []


@pytest.mark.parametrize(
    "text, match",
    [
        ("large_files: [\n", r"large_files.yml: not valid YAML \(.* at line 2, column 1\); expected 'large_files:'"),
        ("", r"expected a top-level key 'large_files' .*; got an empty file"),
        ("files: []\n", r"expected a top-level key 'large_files' .*got keys \['files'\]"),
        ("- path: a\n", r"expected a top-level key 'large_files'.*got list"),
        ("large_files: []\nextra: 1\n", r"unexpected top-level key\(s\) \['extra'\]"),
        ("large_files: models/model.pt\n", r"'large_files' must be a list of entries, got str"),
        ("large_files:\n- models/model.pt\n", r"large_files\[0\]: expected a mapping with 'path' and 'url', got str"),
        ("large_files:\n- path: models/model.pt\n", r"large_files\[0\]: missing key 'url'"),
        ("large_files:\n- url: https://x/y.pt\n", r"large_files\[0\]: missing key 'path'"),
        (
            "large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_value: abc\n",
            r"large_files\[0\]: unknown key\(s\) \['hash_value'\]; an entry has path, url, hash_val, hash_type",
        ),
        (
            "large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_val: 'abcd'\n  hash_type: crc32\n",
            r"large_files\[0\] \(m.pt\): unknown hash_type 'crc32'; expected one of md5, sha1, sha256, sha512",
        ),
        (
            "large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_val: 'abcd'\n  hash_type: sha256\n",
            r"hash_val has 4 hex digits but a sha256 digest has 64",
        ),
        (
            "large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_val: 'abcd'\n",
            r"matches no hash type; add hash_type",
        ),
        ("large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_val: 'xyz'\n", r"is not a hex digest"),
        ("large_files:\n- path: m.pt\n  url: https://x/y.pt\n  hash_val: 12345\n", r"is a int; quote it"),
        ("large_files:\n- path: m.pt\n  url: ftp://x/y.pt\n", r"unsupported scheme 'ftp'; use http\(s\)://, file://"),
        ("large_files:\n- path: m.pt\n  url: ''\n", r"'url' must be a non-empty string"),
        (
            "large_files:\n- path: models/m.pt\n  url: a.pt\n- path: models/./m.pt\n  url: b.pt\n",
            r"large_files\[1\]: path 'models/m.pt' is already listed at large_files\[0\]; list each file once",
        ),
    ],
)
def test_ill_large_files_list(tmp_path, text, match):
    (tmp_path / "large_files.yml").write_text(text)
    with pytest.raises(LargeFilesError, match=match) as e:
        read_large_files(tmp_path)
    assert str(tmp_path / "large_files.yml") in str(e.value)  # names the file
    assert check_large_files(tmp_path) == [str(e.value)]  # verify gets the same message, without raising


@pytest.mark.parametrize(
    "path, why",
    [
        ("../outside.pt", "leaves the bundle folder"),
        ("models/../../outside.pt", "leaves the bundle folder"),
        ("/etc/passwd", "is absolute"),
        ("models\\\\model.pt", "uses '\\\\'"),
        ("models/", "names a folder"),
        (".", "leaves the bundle folder"),
    ],
)
def test_ill_path_escaping_the_bundle(tmp_path, path, why):
    b = _bundle(tmp_path, f"- path: '{path}'\n  url: https://x/y.pt\n")
    with pytest.raises(LargeFilesError, match=rf"large_files\[0\]: path .* {why}"):
        read_large_files(b)
    with pytest.raises(LargeFilesError):
        fetch_large_files(b, allow_unverified=True)
    assert not (tmp_path / "outside.pt").exists()


def test_ill_path_through_a_symlink_leaving_the_bundle(tmp_path):
    b = _bundle(tmp_path, _entry("out/model.pt", "https://x/y.pt"))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", b / "out")
    with pytest.raises(LargeFilesError, match=r"leads outside the bundle folder \(through a symbolic link\)"):
        read_large_files(b)


def test_ill_two_lists(tmp_path):
    (tmp_path / "large_files.yml").write_text("large_files: []\n")
    (tmp_path / "large_files.json").write_text('{"large_files": []}')
    with pytest.raises(LargeFilesError, match=r"found large_files.yml, large_files.json; keep one list"):
        read_large_files(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# fetching


def test_fetch_over_file_url_then_nothing_to_do(tmp_path, hosted):
    b = _bundle(tmp_path, _entry("models/model.pt", (hosted / "model_v1.pt").as_uri(), _sha256(WEIGHTS), "sha256"))
    assert check_large_files(b) == [
        f"models/model.pt: listed in large_files.yml but absent; fetch it with `tlk download_large_files {b}`"
    ]
    assert check_large_files(b, require_present=False) == []
    assert fetch_large_files(b) == [b / "models" / "model.pt"]
    assert (b / "models" / "model.pt").read_bytes() == WEIGHTS
    assert (b / "models" / "model.pt").stat().st_mode & 0o777 == 0o644
    assert check_large_files(b) == [] and _leftovers(b) == []
    assert fetch_large_files(b) == []  # present with the right hash: not fetched again
    assert fetch_large_files(b, force=True) == [b / "models" / "model.pt"]


def test_fetch_relative_url_and_other_hash_types(tmp_path, hosted):
    b = _bundle(
        tmp_path,
        _entry("models/a.pt", "../host/model_v1.pt", hashlib.md5(WEIGHTS).hexdigest()),
        _entry("models/b.pt", "../host/model_v1.pt", hashlib.sha1(WEIGHTS).hexdigest(), "sha1"),
        _entry("models/sub/c.pt", "../host/model_v1.pt", hashlib.sha512(WEIGHTS).hexdigest(), "sha512"),
    )
    got = fetch_large_files(b)
    assert got == [b / "models" / "a.pt", b / "models" / "b.pt", b / "models" / "sub" / "c.pt"]
    assert all(p.read_bytes() == WEIGHTS for p in got)


def test_fetch_over_http(tmp_path, hosted):
    with serve_dir(hosted) as url:
        b = _bundle(tmp_path, _entry("models/model.pt", f"{url}/model_v1.pt", _sha256(WEIGHTS), "sha256"))
        assert fetch_large_files(b, timeout=10) == [b / "models" / "model.pt"]
        b404 = _bundle(tmp_path, _entry("models/model.pt", f"{url}/missing.pt", _sha256(WEIGHTS)), name="b404")
        with pytest.raises(DownloadError, match=r"large file models/model.pt of b404 http://.*/missing.pt: HTTP 404"):
            fetch_large_files(b404, timeout=10)
    assert (b / "models" / "model.pt").read_bytes() == WEIGHTS
    assert _leftovers(b) == [] and not (b404 / "models" / "model.pt").exists() and _leftovers(b404) == []


def test_ill_hash_mismatch_leaves_nothing_and_keeps_the_old_file(tmp_path, hosted):
    wrong = "0" * 64
    url = (hosted / "model_v1.pt").as_uri()
    b = _bundle(tmp_path, _entry("models/model.pt", url, wrong, "sha256"))
    (b / "models" / "model.pt").write_bytes(b"the previous weights")
    assert check_large_files(b) == [
        f"models/model.pt: sha256 is {_sha256(b'the previous weights')} but large_files.yml says {wrong}; fetch it "
        f"again (`tlk download_large_files {b} --force`) or, if this file is the new release, update hash_val"
    ]
    with pytest.raises(LargeFilesError) as e:
        fetch_large_files(b)
    text = str(e.value)
    assert f"large_files[0] (models/model.pt): {url} has sha256 {_sha256(WEIGHTS)}, expected {wrong}" in text
    assert "Nothing was written; the existing models/model.pt was kept" in text
    assert (b / "models" / "model.pt").read_bytes() == b"the previous weights"
    assert _leftovers(b) == []
    # without a previous file: nothing at all
    (b / "models" / "model.pt").unlink()
    with pytest.raises(LargeFilesError, match="Nothing was written. Fix the url or hash_val"):
        fetch_large_files(b)
    assert list((b / "models").iterdir()) == []


def test_ill_missing_hash_is_refused_unless_allowed(tmp_path, hosted):
    url = (hosted / "model_v1.pt").as_uri()
    b = _bundle(tmp_path, _entry("models/model.pt", url), _entry("models/b.pt", url, _sha256(WEIGHTS)))
    with pytest.raises(
        LargeFilesError,
        match=r"large_files\[0\] \(models/model.pt\) has no hash_val.*add hash_val and hash_type.*"
        r"allow_unverified=True \(--allow_unverified\).*Nothing was downloaded",
    ):
        fetch_large_files(b)
    assert list((b / "models").iterdir()) == []  # not even the verified entry: refused before any download
    assert fetch_large_files(b, allow_unverified=True) == [b / "models" / "model.pt", b / "models" / "b.pt"]
    assert fetch_large_files(b) == []  # a present unverified file is kept (no hash to compare with)


def test_ill_source_missing(tmp_path):
    b = _bundle(tmp_path, _entry("models/model.pt", (tmp_path / "nope.pt").as_uri(), _sha256(WEIGHTS)))
    with pytest.raises(DownloadError, match=r"large file models/model.pt of b .*nope.pt does not exist"):
        fetch_large_files(b)
    assert list((b / "models").iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# download fetches a bundle's large files before the bundle is renamed into place


def _release_with_large_file(tmp_path: Path, url: str, digest: str | None, version: str = "0.1.0") -> Path:
    """A zip of the fake bundle whose models/model.pt is not in the zip but in large_files.yml; returns the index."""
    b = make_fake_bundle(tmp_path / f"src_{version}", version=version, weights=True)
    (b / "models" / "model.pt").unlink()
    kind = "sha256" if digest else None
    (b / "large_files.yml").write_text("large_files:\n" + _entry("models/model.pt", url, digest, kind))
    pub = tmp_path / f"pub_{version}"
    pub.mkdir()
    z = pub / f"{NAME}_v{version}.zip"
    write_bundle_zip(b, z)
    entry = {"name": NAME, "version": version, "sha256": _sha256(z.read_bytes()), "source": z.name}
    (pub / "model_info.json").write_text(json.dumps({f"{NAME}_v{version}": entry}))
    return pub / "model_info.json"


def test_download_fetches_large_files_over_http(tmp_path, hosted):
    with serve_dir(hosted) as url:
        index = _release_with_large_file(tmp_path, f"{url}/model_v1.pt", _sha256(WEIGHTS))
        result = install_bundle(NAME, index, tmp_path / "dl", timeout=10)
    assert result.large_files == [tmp_path / "dl" / NAME / "models" / "model.pt"]
    assert result.large_files[0].read_bytes() == WEIGHTS
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [NAME]


def test_ill_download_with_bad_large_file_keeps_the_old_copy(tmp_path, hosted):
    url = (hosted / "model_v1.pt").as_uri()
    dl = tmp_path / "dl"
    old = download_bundle(NAME, _release_with_large_file(tmp_path, url, _sha256(WEIGHTS)), dl)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    bad = _release_with_large_file(tmp_path, url, "f" * 64, version="0.2.0")
    with pytest.raises(LargeFilesError, match=rf"{url} has sha256 {_sha256(WEIGHTS)}, expected f{{64}}"):
        download_bundle(NAME, bad, dl)
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in dl.iterdir()) == [NAME]  # no temporary folders left
    # an entry without hash_val: refused, unless allowed
    unverified = _release_with_large_file(tmp_path, url, None, version="0.3.0")
    with pytest.raises(LargeFilesError, match=r"has no hash_val"):
        download_bundle(NAME, unverified, dl)
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    path = download_bundle(NAME, unverified, dl, allow_unverified=True)
    assert (path / "models" / "model.pt").read_bytes() == WEIGHTS
    assert json.loads((path / "configs" / "metadata.json").read_text())["version"] == "0.3.0"
