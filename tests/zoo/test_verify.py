# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk verify``: every check passes on a conforming bundle and names the fix when broken; every real bundle passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import monai
import pytest
import torch

from tests.zoo_helpers import make_fake_bundle
from tlk_components.utils.errors import ConfigError
from tlk_components.zoo.registry import list_bundles
from tlk_components.zoo.verify import (
    ALL_CHECKS,
    STATIC_CHECKS,
    VerifyError,
    readme_metrics,
    verify_all,
    verify_bundle,
    verify_cmd,
)

REPO = Path(__file__).resolve().parents[2]
# the fake bundles live outside bundles/, so their code checks run with trust=True, which warns (by design)
pytestmark = pytest.mark.filterwarnings("ignore:verify builds the configs:UserWarning")


def _edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj, indent=4))


def _problems(report, check: str) -> str:
    return "\n".join(report[check].problems)


def test_conforming_bundle_passes_every_named_check(tmp_path):
    b = make_fake_bundle(tmp_path)
    report = verify_bundle(b, trust=True)  # a folder outside bundles/: the code checks run only when trusted
    assert report.ok, report.summary()
    assert [c.name for c in report.checks] == list(ALL_CHECKS)
    assert "random initialisation" in report["torchscript"].detail
    with_weights = verify_bundle(make_fake_bundle(tmp_path / "w", weights=True), checks=["torchscript"], trust=True)
    assert with_weights.ok and "models/model.pt" in with_weights["torchscript"].detail


def test_ill_metadata_against_schema(tmp_path):
    b = make_fake_bundle(tmp_path)
    _edit_json(b / "configs" / "metadata.json", lambda m: (m.pop("authors"), m.update(version="0.2.0")))
    r = verify_bundle(b, checks=["metadata"])
    assert not r.ok and r.failed == ["metadata"]
    text = _problems(r, "metadata")
    assert "'authors' is a required property" in text
    assert "version 0.2.0 has no changelog entry" in text


def test_ill_missing_required_files(tmp_path):
    b = make_fake_bundle(tmp_path)
    (b / "configs" / "logging.conf").unlink()
    (b / "LICENSE").unlink()
    (b / "configs" / "evaluate.json").write_text("{not json")
    text = _problems(verify_bundle(b, checks=["files"]), "files")
    assert "configs/logging.conf: missing" in text and "LICENSE: missing" in text
    assert "configs/evaluate.json: not valid JSON (line 1" in text


def test_ill_missing_config_keys(tmp_path):
    b = make_fake_bundle(tmp_path)

    def drop(cfg):
        del cfg["validate"]["evaluator"], cfg["epochs"], cfg["train"]["trainer"]["max_epochs"]
        cfg["initialize"] = ["$monai.utils.set_determinism(seed=0)"]

    def rename_net(cfg):
        cfg.pop("input_dir"), cfg.pop("inferer")
        cfg["network_definition"] = cfg.pop("network_def")

    _edit_json(b / "configs" / "train.json", drop)
    _edit_json(b / "configs" / "inference.json", rename_net)
    text = _problems(verify_bundle(b, checks=["config_keys"]), "config_keys")
    assert "configs/train.json: key 'validate#evaluator' missing" in text
    assert "'train#trainer#max_epochs' or 'epochs'" in text
    assert "configure_threads" in text
    assert "configs/inference.json: key 'input_dir' missing" in text
    assert "configs/inference.json: key 'inferer' or 'evaluator' or 'predictor' missing" in text
    assert "configs/inference.json: no 'network_def' (or 'network_def_<name>' per network)" in text


def test_ill_override_files_must_only_override(tmp_path):
    b = make_fake_bundle(tmp_path)
    train = json.loads((b / "configs" / "train.json").read_text())
    (b / "configs" / "evaluate.json").write_text(
        json.dumps({"train": train["train"], "device": train["device"], "validate#handlerz#0": {}})
    )
    (b / "configs" / "multi_gpu_train.json").write_text(json.dumps({"epochs": 2}))
    report = verify_bundle(b, checks=["overrides"])
    text = _problems(report, "overrides")
    assert "redefines the whole 'train' section" in text
    assert "'device' repeats train.json unchanged" in "\n".join(report["overrides"].warnings)  # advice only
    assert "'validate#handlerz#0' overrides inside 'validate#handlerz'" in text
    assert "no init_distributed / init_process_group" in text
    assert "no DistributedDataParallel" in text and "no DistributedSampler / num_replicas" in text
    # an engine that shards its data itself is switched on with a '#distributed' override
    mg = json.loads((b / "configs" / "multi_gpu_train.json").read_text())
    _edit_json(b / "configs" / "multi_gpu_train.json", lambda c: c.update({"train#trainer#distributed": True}))
    assert "no DistributedSampler" not in _problems(verify_bundle(b, checks=["overrides"]), "overrides")
    assert mg == {"epochs": 2}


def test_ill_bundle_local_scripts(tmp_path):
    b = make_fake_bundle(tmp_path)
    (b / "scripts").mkdir()
    _edit_json(b / "configs" / "inference.json", lambda c: c.update(inferer={"_target_": "scripts.inferer.Mine"}))
    text = _problems(verify_bundle(b, checks=["portable"]), "portable")
    assert "scripts/: bundle-local Python" in text and "'scripts.inferer.Mine'" in text


def test_readme_performance_rows(tmp_path):
    b = make_fake_bundle(tmp_path, metric=0.875)
    rows = readme_metrics(b / "docs" / "README.md")
    assert rows["accuracy"] == "0.875"  # the row outside '## Performance' (0.0) is ignored
    readme = b / "docs" / "README.md"
    readme.write_text(readme.read_text().replace("| accuracy | 0.875 |", "| accuracy | 0.9 |"))
    text = _problems(verify_bundle(b, checks=["readme_metrics"]), "readme_metrics")
    assert "'accuracy' = 0.9 but metadata.json eval_metrics says 0.875" in text
    readme.write_text("# Model Overview\n")
    assert "no '## Performance' section" in _problems(verify_bundle(b, checks=["readme_metrics"]), "readme_metrics")


def test_readme_performance_section_skips_comments_in_code_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "## Performance\n```bash\n# reproduce with:\npython x.py\n```\n| accuracy | 0.9 |\n## Next\n| accuracy | 0.1 |\n"
    )
    assert readme_metrics(readme)["accuracy"] == "0.9"


def test_ill_readme_metric_row_missing(tmp_path):
    b = make_fake_bundle(tmp_path)
    _edit_json(b / "configs" / "metadata.json", lambda m: m["eval_metrics"].update(macro_f1=0.5))
    text = _problems(verify_bundle(b, checks=["readme_metrics"]), "readme_metrics")
    assert "no row '| macro_f1 | 0.5 |'" in text


def test_ill_net_in_out_channel_mismatch(tmp_path):
    b = make_fake_bundle(tmp_path)
    _edit_json(
        b / "configs" / "metadata.json",
        lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=5),
    )
    r = verify_bundle(b, checks=["net_in_out"], trust=True)
    assert r.failed == ["net_in_out"] and "output channel number `3` doesn't match: `5`" in _problems(r, "net_in_out")


def test_ill_torchscript_stale_or_mismatched_weights(tmp_path):
    b = make_fake_bundle(tmp_path, weights=True)
    other = monai.networks.nets.FullyConnectedNet(in_channels=4, out_channels=3, hidden_channels=[8])
    torch.jit.save(torch.jit.script(other), str(b / "models" / "model.ts"))  # exported from other weights
    r = verify_bundle(b, checks=["torchscript"], trust=True)
    assert "models/model.ts differs from models/model.pt" in _problems(r, "torchscript")
    wrong = monai.networks.nets.FullyConnectedNet(in_channels=4, out_channels=3, hidden_channels=[16])
    torch.save(wrong.state_dict(), b / "models" / "model.pt")
    r = verify_bundle(b, checks=["torchscript"], trust=True)
    assert "models/model.pt does not fit network_def" in _problems(r, "torchscript")


def test_every_network_of_a_multi_network_bundle_is_checked(tmp_path):
    b = make_fake_bundle(tmp_path)

    def two_nets(cfg):
        net = cfg.pop("network_def")
        cfg["network_def_view0"] = net
        cfg["network_def_view1"] = dict(net, hidden_channels=[6])

    for name in ("train.json", "inference.json"):
        _edit_json(b / "configs" / name, two_nets)
    (b / "models").mkdir()
    trained = monai.networks.nets.FullyConnectedNet(in_channels=4, out_channels=3, hidden_channels=[6])
    torch.save(trained.state_dict(), b / "models" / "model_view1.pt")
    r = verify_bundle(b, checks=["config_keys", "net_in_out", "torchscript"], trust=True)
    assert r.ok, r.summary()
    assert "network_def_view0, network_def_view1" in r["net_in_out"].detail
    detail = r["torchscript"].detail
    assert "network_def_view0 scripted from random initialisation (no models/model_view0.pt)" in detail
    assert "network_def_view1 scripted from models/model_view1.pt" in detail
    _edit_json(b / "configs" / "inference.json", lambda c: c["network_def_view1"].update(out_channels=7))
    r = verify_bundle(b, checks=["net_in_out", "torchscript"], trust=True)
    assert "verify_net_in_out(network_def_view1)" in _problems(r, "net_in_out")
    assert "models/model_view1.pt does not fit network_def_view1" in _problems(r, "torchscript")


def test_ill_unknown_bundle_and_check(tmp_path):
    with pytest.raises(ConfigError, match="unknown bundle 'no_such_bundle'"):
        verify_bundle("no_such_bundle")
    with pytest.raises(ConfigError, match="check='metadta' is not supported.*Did you mean 'metadata'"):
        verify_bundle(make_fake_bundle(tmp_path), checks=["metadta"])


def test_verify_all_covers_every_bundle_in_root(tmp_path, monkeypatch):
    make_fake_bundle(tmp_path, name="a_ct_segmentation")
    bad = make_fake_bundle(tmp_path, name="b_mri_detection")
    (bad / "LICENSE").unlink()
    reports = verify_all(tmp_path, checks=STATIC_CHECKS)
    assert [r.bundle for r in reports] == ["a_ct_segmentation", "b_mri_detection"]
    assert [r.ok for r in reports] == [True, False]
    monkeypatch.setenv("TLK_BUNDLES_DIR", str(tmp_path))
    with pytest.raises(VerifyError, match=r"1 of 2 bundle\(s\) failed: b_mri_detection"):
        verify_cmd(all=True, static=True)
    with pytest.raises(VerifyError, match="exactly one of BUNDLE or --all"):
        verify_cmd()


def test_ill_cli_verify_failure_is_clear_and_exits_2(tmp_path):
    b = make_fake_bundle(tmp_path)
    (b / "docs" / "README.md").unlink()
    env = dict(os.environ, TLK_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tlk_components", "verify", str(b), "--static"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "docs/README.md: missing" in proc.stderr and "[FAIL] files" in proc.stderr


@pytest.mark.parametrize("bundle", sorted(list_bundles()))
def test_every_zoo_bundle_passes_verify(bundle):
    """The same checks as `tlk verify --all`, one test per bundle (a new bundle is covered automatically)."""
    report = verify_bundle(bundle)
    assert report.ok, report.summary()
