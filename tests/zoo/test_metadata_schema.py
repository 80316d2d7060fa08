# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Every bundle's metadata validates offline against the shipped schema and its README repeats ``eval_metrics``.

Parametrised over :func:`tlk_components.zoo.registry.list_bundles`, so adding a bundle is enough to cover it.
"""

from __future__ import annotations

import json

import pytest

from tlk_components.zoo.metadata import metadata_errors, parse_version
from tlk_components.zoo.registry import list_bundles
from tlk_components.zoo.verify import STATIC_CHECKS, readme_metrics, verify_bundle

BUNDLES = list_bundles()


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_metadata_validates_offline(bundle):
    errors = metadata_errors(BUNDLES[bundle] / "configs" / "metadata.json")
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_readme_performance_equals_eval_metrics(bundle):
    path = BUNDLES[bundle]
    metrics = json.loads((path / "configs" / "metadata.json").read_text())["eval_metrics"]
    readme = path / "docs" / "README.md"
    assert readme.is_file(), f"{readme} missing: every bundle documents its eval_metrics there"
    rows = readme_metrics(readme)
    assert metrics, "eval_metrics is empty"
    for key, value in metrics.items():
        assert key in rows, f"docs/README.md '## Performance' lacks the row '| {key} | {value} |'"
        try:
            shown = float(rows[key])
        except ValueError:
            pytest.fail(f"docs/README.md row '{key}' holds {rows[key]!r}, not a number (metadata.json says {value})")
        assert shown == float(value), f"{key}: README {rows[key]} != metadata.json {value}"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_version_is_newest_changelog_entry(bundle):
    meta = json.loads((BUNDLES[bundle] / "configs" / "metadata.json").read_text())
    assert max(meta["changelog"], key=parse_version) == meta["version"]


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_bundle_follows_file_conventions(bundle):
    """Required files, config keys, override-only variants, no bundle-local scripts (``verify --static``)."""
    report = verify_bundle(BUNDLES[bundle], checks=STATIC_CHECKS)
    assert report.ok, report.summary()
