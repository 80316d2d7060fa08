# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Version ordering (semantic versioning, PEP 440 spellings) and the choice of a compatible version (MONAI #7930)."""

from __future__ import annotations

import pytest

from tlk_components.zoo.download import (
    DownloadError,
    choose_version,
    index_entries,
    release_tuple,
    requirement_problems,
    version_compatible,
)
from tlk_components.zoo.metadata import is_prerelease, parse_version

# each version sorts strictly before the next (semver.org §11 example, plus PEP 440 and numeric tags)
ASCENDING = [
    "0.5.9",
    "0.5.10",
    "0.9.9",
    "1.0.0.dev0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0-rc2",
    "1.0.0rc10",
    "1.0.0",
    "1.0.0.post1",
    "1.0.1",
    "1.10.0",
]


@pytest.mark.parametrize("lower, higher", list(zip(ASCENDING, ASCENDING[1:], strict=False)))
def test_semver_order(lower, higher):
    assert parse_version(lower) < parse_version(higher)


def test_sorting_a_shuffled_list():
    shuffled = ASCENDING[::2][::-1] + ASCENDING[1::2]
    assert sorted(shuffled, key=parse_version) == ASCENDING
    assert max(["1.0.0-rc1", "1.0.0-rc2", "1.0.0", "0.5.10"], key=parse_version) == "1.0.0"
    assert sorted(["1.0.0", "1.0.0-rc2", "1.0.0-rc1"], key=parse_version) == ["1.0.0-rc1", "1.0.0-rc2", "1.0.0"]


@pytest.mark.parametrize(
    "a, b",
    [
        ("1.0", "1.0.0"),
        ("2.13.0+cpu", "2.13.0"),
        ("1.0.0-rc.1", "1.0.0rc1"),
        ("v1.2.3", "1.2.3"),
        ("1.0.0-RC1", "1.0.0rc1"),
        ("1.0.0-alpha", "1.0.0a"),
    ],
)
def test_equal_spellings(a, b):
    assert parse_version(a) == parse_version(b)


@pytest.mark.parametrize("bad", ["1.x", "", "abc", "1.0.0-", "1..0", "1.0.0 rc1", "1.0.0+"])
def test_ill_not_a_version(bad):
    with pytest.raises(ValueError, match=r"expected dotted integers such as '1.2.3'"):
        parse_version(bad)


def test_is_prerelease():
    assert is_prerelease("1.0.0-rc1") and is_prerelease("1.0.0rc1") and is_prerelease("1.0.0.dev0")
    assert not is_prerelease("1.0.0") and not is_prerelease("1.0.0.post1") and not is_prerelease("2.13.0+cpu")


@pytest.mark.parametrize(
    "recorded, installed, ok",
    [
        ("1.6.1", "1.6.1", True),
        ("1.6.0", "1.6.1", True),
        ("1.5", "1.6.1", True),
        ("1.6.1rc1", "1.6.1", True),  # tags ignored: compared on major.minor.patch
        ("2.13.0+cu121", "2.13.0+cpu", True),
        ("1.6.2", "1.6.1", False),
        ("1.7.0", "1.6.1", False),
        ("0.9.0", "1.6.1", False),  # older major version
        ("2.0.0", "1.6.1", False),
        ("", "1.6.1", None),
        ("latest", "1.6.1", None),
    ],
)
def test_version_compatible(recorded, installed, ok):
    assert version_compatible(recorded, installed) is ok


def test_release_tuple():
    assert release_tuple("2.13.0+cpu") == (2, 13, 0) and release_tuple("1.6") == (1, 6, 0)
    assert release_tuple("1.6.1rc1") == (1, 6, 1) and release_tuple("x") is None


INSTALLED = {"monai_version": "1.6.1", "pytorch_version": "2.13.0"}


def _entries(spec: dict[str, tuple[str, str]]) -> dict:
    return index_entries(
        {
            f"b_v{v}": {"source": "x", "sha256": "0" * 64, "monai_version": m, "pytorch_version": t}
            for v, (m, t) in spec.items()
        }
    )


def _choose(spec, **kw):
    return choose_version(_entries(spec), "b", monai_version="1.6.1", pytorch_version="2.13.0+cpu", **kw)


def test_newest_compatible_is_picked_and_the_message_says_why():
    c = _choose({"0.1.0": ("1.5.0", "2.1.0"), "0.2.0": ("1.6.1", "2.13.0"), "0.3.0": ("1.7.0", "2.13.0")})
    assert c.version == "0.2.0" and c.entry["version"] == "0.2.0" and c.warnings == []
    assert (
        c.message
        == "picked 0.2.0 (newest compatible with MONAI 1.6.1, torch 2.13.0); skipped 0.3.0 (needs MONAI 1.7.0)"
    )
    assert c.skipped == {"0.3.0": "needs MONAI 1.7.0"}


def test_pytorch_requirement_counts_too():
    c = _choose({"0.2.0": ("1.6.1", "2.13.0+cu121"), "0.3.0": ("1.6.0", "3.0.0"), "0.4.0": ("1.6.0", "2.14.0")})
    assert c.version == "0.2.0"
    assert c.skipped == {"0.4.0": "needs torch 2.14.0", "0.3.0": "needs torch 3.0.0, another major version"}


def test_stable_release_preferred_over_newer_prerelease():
    c = _choose({"1.0.0": ("1.6.1", "2.13.0"), "1.1.0-rc1": ("1.6.1", "2.13.0"), "1.1.0rc2": ("1.6.1", "2.13.0")})
    assert c.version == "1.0.0"
    assert "skipped 1.1.0rc2 (pre-release; pass --version 1.1.0rc2 to take it), 1.1.0-rc1 (pre-release" in c.message


def test_prerelease_taken_when_no_stable_release_is_compatible():
    c = _choose({"1.0.0": ("1.7.0", "2.13.0"), "1.0.0-rc1": ("1.6.1", "2.13.0"), "1.0.0-rc2": ("1.6.1", "2.13.0")})
    assert c.version == "1.0.0-rc2"
    assert "no compatible stable release, so a pre-release" in c.message and "1.0.0 (needs MONAI 1.7.0)" in c.message


def test_explicit_incompatible_version_is_taken_with_a_warning():
    c = _choose({"0.2.0": ("1.6.1", "2.13.0"), "0.3.0": ("1.7.0", "2.13.0")}, version="0.3.0")
    assert c.version == "0.3.0" and c.message == "picked 0.3.0 (asked for; not compatible: needs MONAI 1.7.0)"
    assert (
        len(c.warnings) == 1
        and "b 0.3.0 needs MONAI 1.7.0, but MONAI 1.6.1, torch 2.13.0 is installed" in c.warnings[0]
    )
    assert _choose({"0.2.0": ("1.6.1", "2.13.0")}, version="0.2.0").warnings == []


def test_ill_nothing_compatible_lists_every_version_and_its_needs():
    with pytest.raises(DownloadError) as e:
        _choose({"0.2.0": ("1.7.0", "2.13.0"), "0.3.0": ("1.8.0", "3.0.0")})
    text = str(e.value)
    assert "no version of b works with the installed MONAI 1.6.1, torch 2.13.0" in text
    assert "0.3.0 (needs MONAI 1.8.0; needs torch 3.0.0, another major version); 0.2.0 (needs MONAI 1.7.0)" in text
    assert "pass --version VERSION to take one anyway" in text


def test_missing_requirements_are_asked_for_only_where_needed():
    entries = index_entries({f"b_v{v}": {"source": "x", "sha256": "0" * 64} for v in ("0.1.0", "0.2.0", "0.3.0")})
    asked = []

    def requirements(version, entry):
        asked.append(version)
        return {"0.3.0": {"monai_version": "1.9.0"}, "0.2.0": {"monai_version": "1.6.0"}}.get(version, {})

    c = choose_version(entries, "b", monai_version="1.6.1", pytorch_version="2.13.0", requirements=requirements)
    assert c.version == "0.2.0" and asked == ["0.3.0", "0.2.0"]  # 0.1.0 never looked at
    assert c.entry["monai_version"] == "1.6.0" and "skipped 0.3.0 (needs MONAI 1.9.0)" in c.message
    # without a way to look them up, unknown requirements do not block
    assert choose_version(entries, "b", monai_version="1.6.1").version == "0.3.0"


def test_requirement_problems_default_to_the_installed_versions():
    assert requirement_problems({"monai_version": "", "pytorch_version": None}) == []
    assert requirement_problems({"monai_version": "99.0.0"}) == ["needs MONAI 99.0.0, another major version"]
    assert requirement_problems({"monai_version": "1.6.1"}, INSTALLED) == []
