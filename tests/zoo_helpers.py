# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""A small, complete fake bundle (tiny MLP) and zip/HTTP helpers for the zoo-operation tests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import monai
import numpy
import torch

__all__ = ["index_for_zip", "make_fake_bundle", "serve_dir", "write_json", "write_zip"]

NET = {
    "_target_": "monai.networks.nets.FullyConnectedNet",
    "in_channels": 4,
    "out_channels": 3,
    "hidden_channels": [8],
}

INIT = ["$tlk_components.utils.configure_threads(@num_threads)", "$monai.utils.set_determinism(seed=0)"]


def _json(obj: Any) -> str:
    """JSON as the zoo's pre-commit hook formats it (4-space indent, key order kept, trailing newline)."""
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` formatted as ``verify``'s ``json_format`` check expects; returns the path."""
    Path(path).write_text(_json(obj))
    return Path(path)


def _metadata(name: str, version: str, metric: float) -> dict[str, Any]:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version,
        "changelog": {version: "fake bundle for tests", "0.1.0": "initial"}
        if version != "0.1.0"
        else {"0.1.0": "initial"},
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {},
        "name": f"Fake {name}",
        "task": "classification of 4 features into 3 classes",
        "description": "test fixture",
        "authors": "TLK Model Zoo contributors",
        "copyright": "Copyright (c) TLK Model Zoo contributors",
        "eval_metrics": {"accuracy": metric},
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "vector",
                    "format": "features",
                    "modality": "none",
                    "num_channels": 4,
                    "spatial_shape": [],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classification",
                    "num_channels": 3,
                    "spatial_shape": [],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "a", "1": "b", "2": "c"},
                }
            },
        },
    }


def make_fake_bundle(
    root: str | Path,
    name: str = "fake_mlp_classification",
    version: str = "0.1.0",
    metric: float = 0.875,
    weights: bool = False,
) -> Path:
    """Write a bundle that follows every convention `verify` checks; returns its folder.

    Args:
        root: parent folder (the bundle is ``root/name``).
        version: metadata version (with a changelog line).
        metric: eval_metrics accuracy (also written in the README).
        weights: also write ``models/model.pt`` (seeded random weights) and a ``checkpoint_last.pt``.
    """
    b = Path(root) / name
    (b / "configs").mkdir(parents=True, exist_ok=True)
    (b / "docs").mkdir(exist_ok=True)
    (b / "LICENSE").write_text("Apache License 2.0 (test fixture)\n")
    (b / "configs" / "metadata.json").write_text(_json(_metadata(name, version, metric)))
    common = {
        "imports": ["$import os", "$import torch", "$import tlk_components"],
        "bundle_root": "$tlk_components.zoo.infer_bundle_root()",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/demo_data'",
        "device": "$tlk_components.utils.resolve_device('auto')",
        "num_threads": None,
        "network_def": NET,
        "network": "$@network_def.to(@device)",
    }
    train = dict(common)
    train.update(
        {
            "epochs": 1,
            "train": {
                "dataset": {"_target_": "monai.data.Dataset", "data": []},
                "handlers": [],
                "trainer": {"_target_": "monai.engines.SupervisedTrainer", "max_epochs": "@epochs"},
            },
            "validate": {
                "dataset": {"_target_": "monai.data.Dataset", "data": []},
                "handlers": [],
                "evaluator": {"_target_": "monai.engines.SupervisedEvaluator"},
            },
            "initialize": INIT,
            "run": ["$@train#trainer.run()"],
        }
    )
    inference = dict(common)
    inference.update(
        {
            "input_dir": "$@bundle_root + '/demo_data'",
            "inferer": {"_target_": "monai.inferers.SimpleInferer"},
            "initialize": INIT,
            "run": ["$print('inference')"],
        }
    )
    (b / "configs" / "train.json").write_text(_json(train))
    (b / "configs" / "inference.json").write_text(_json(inference))
    (b / "configs" / "evaluate.json").write_text(_json({"run": ["$@validate#evaluator.run()"]}))
    mg = {
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": "$@network_def.to(@device)",
        },
        "train#sampler": {"_target_": "monai.data.DistributedSampler", "dataset": "@train#dataset"},
        "initialize": ["$tlk_components.utils.distributed.init_distributed()", *INIT],
    }
    (b / "configs" / "multi_gpu_train.json").write_text(_json(mg))
    (b / "configs" / "logging.conf").write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=console\n[formatters]\nkeys=f\n[logger_root]\nlevel=INFO\n"
        "handlers=console\n[handler_console]\nclass=StreamHandler\nlevel=INFO\nformatter=f\nargs=(sys.stdout,)\n"
        "[formatter_f]\nformat=%(message)s\n"
    )
    (b / "docs" / "data_license.txt").write_text("Test fixture: no third-party data.\n")
    (b / "docs" / "README.md").write_text(
        f"# Model Overview\nA fake bundle.\n\n## Performance\n\n| metric | value |\n|---|---|\n| accuracy | {metric} |\n\n"
        "Command: none (test fixture).\n\n## MONAI Bundle Commands\n\n| accuracy | 0.0 |\n\n# License\nApache-2.0\n"
    )
    if weights:
        torch.manual_seed(1)
        net = monai.networks.nets.FullyConnectedNet(in_channels=4, out_channels=3, hidden_channels=[8])
        (b / "models").mkdir(exist_ok=True)
        torch.save(net.state_dict(), b / "models" / "model.pt")
        torch.save({"model": net.state_dict()}, b / "models" / "checkpoint_last.pt")
    return b


def write_zip(path: str | Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """Write a zip with the given file entries (and symlink entries name -> target, Unix mode)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def index_for_zip(zip_path: str | Path, name: str, version: str = "0.1.0") -> Path:
    """A ``model_info.json`` next to ``zip_path`` whose one entry carries the zip's real sha256; returns its path."""
    import hashlib

    zip_path = Path(zip_path)
    entry = {
        "name": name,
        "version": version,
        "sha256": hashlib.sha256(zip_path.read_bytes()).hexdigest(),
        "source": zip_path.name,
        "monai_version": "1.0.0",
    }
    index = zip_path.parent / "model_info.json"
    index.write_text(json.dumps({f"{name}_v{version}": entry}))
    return index


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_dir(directory: str | Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
