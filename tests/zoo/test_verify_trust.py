# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk verify`` of a bundle from elsewhere runs none of its config code unless trusted (issue 12, item 8).

A downloaded bundle whose ``network_def`` is a ``$`` expression with a side effect: by default only the file
checks run (nothing is executed, the report says which checks were skipped and how to run them); with
``trust=True`` / ``--trust`` they run and a warning that config code is executed stays visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.zoo_helpers import make_fake_bundle, write_json
from tlk_components.zoo.registry import list_bundles
from tlk_components.zoo.verify import CODE_CHECKS, STATIC_CHECKS, _quiet, is_checkout_bundle, verify_bundle, verify_cmd


def _hostile_bundle(root: Path, marker: Path) -> Path:
    """The fake bundle, its network_def a ``$`` expression that writes ``marker`` and then builds the network."""
    b = make_fake_bundle(root)
    expr = (
        f"$__import__('pathlib').Path({str(marker)!r}).write_text('owned') and None "
        "or monai.networks.nets.FullyConnectedNet(4, 3, [8])"
    )
    for name in ("train.json", "inference.json"):
        cfg_p = b / "configs" / name
        cfg = json.loads(cfg_p.read_text())
        cfg["network_def"] = expr
        write_json(cfg_p, cfg)
    return b


def test_untrusted_bundle_gets_static_checks_only(tmp_path):
    marker = tmp_path / "pwned.txt"
    b = _hostile_bundle(tmp_path / "downloads", marker)
    assert not is_checkout_bundle(b)
    report = verify_bundle(b)
    assert not marker.exists(), "verify executed code from an untrusted bundle's config"
    assert report.ok and report.untrusted == list(CODE_CHECKS)
    assert [c.name for c in report.checks if not c.skipped] == list(STATIC_CHECKS)
    text = report.summary()
    assert "(file checks only)" in text.splitlines()[0]
    assert "net_in_out, torchscript, properties not run: they execute code from the bundle's configs" in text
    assert f"tlk verify {b} --trust" in text
    out = verify_cmd(str(b))
    assert not marker.exists()
    assert "were not run for fake_mlp_classification (pass --trust to run them)" in out
    assert "all 1 bundle(s) passed\n" not in out + "\n"


def test_trusted_bundle_runs_every_check_with_a_visible_warning(tmp_path):
    marker = tmp_path / "pwned.txt"
    b = _hostile_bundle(tmp_path / "downloads", marker)
    with pytest.warns(UserWarning, match=r"any '\$' expression is evaluated by Python.*source you trust"):
        report = verify_bundle(b, trust=True)
    assert marker.read_text() == "owned"  # the user asked for it
    assert report.untrusted == [] and "note:" not in report.summary()
    assert not report["net_in_out"].skipped and not report["torchscript"].skipped
    marker.unlink()
    assert verify_bundle(b, trust=False).untrusted == list(CODE_CHECKS) and not marker.exists()


def test_cli_verify_trust_flag(tmp_path):
    marker = tmp_path / "pwned.txt"
    b = _hostile_bundle(tmp_path / "downloads", marker)
    env = dict(os.environ, TLK_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tlk_components", "verify", str(b)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists() and "pass --trust to run them" in proc.stdout
    proc = subprocess.run([*cmd, "--trust"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists() and "source you trust" in proc.stderr  # the warning reaches the terminal


def test_quiet_keeps_monai_config_code_warnings_visible():
    """MONAI's warning that parsing a config runs code is shown again after the quiet block (not swallowed)."""
    with pytest.warns(UserWarning, match="Only proceed if this config is from a source you trust"):
        with _quiet():
            warnings.warn(
                'parsing config_file x.json: any `"$"`-prefixed value is passed to Python `eval()`. Only proceed '
                "if this config is from a source you trust",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn("tracer noise", DeprecationWarning, stacklevel=1)


def test_checkout_bundles_are_trusted(monkeypatch):
    """``verify --all`` on this checkout's own bundles still runs every check (they are the repo's own)."""
    monkeypatch.delenv("TLK_BUNDLES_DIR", raising=False)
    bundles = list_bundles()
    if not bundles:
        pytest.skip("no bundles in this checkout")
    assert all(is_checkout_bundle(p) for p in bundles.values())
    name = "mnist_mlp_classification" if "mnist_mlp_classification" in bundles else sorted(bundles)[0]
    report = verify_bundle(name, checks=["metadata", "net_in_out"])
    assert report.untrusted == [] and not report["net_in_out"].skipped, report.summary()
