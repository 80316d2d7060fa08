# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Unit tests of tlk_components.utils: validation, atomic I/O, weight loading, threads, devices."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tlk_components.utils import (
    ConfigError,
    DatasetError,
    atomic_torch_save,
    atomic_write_json,
    check_in_range,
    check_positive_int,
    configure_threads,
    load_weights,
    look_up_option,
    resolve_device,
)


@pytest.mark.parametrize("value,expected", [(1, 1), (5, 5), (3.0, 3)])
def test_check_positive_int_accepts(value, expected):
    assert check_positive_int("epochs", value) == expected


@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True, None])
def test_ill_check_positive_int_names_key(value):
    with pytest.raises(ConfigError, match=r"epochs=.*expected an integer >= 1; set e.g. --epochs 1"):
        check_positive_int("epochs", value)


def test_check_in_range():
    assert check_in_range("lr", 0.1, 0.0, 1.0, low_inclusive=False) == 0.1
    with pytest.raises(ConfigError, match=r"lr=0.0: expected a number in \(0.0, 1.0\]"):
        check_in_range("lr", 0.0, 0.0, 1.0, low_inclusive=False)
    with pytest.raises(ConfigError, match="lr=nan"):
        check_in_range("lr", float("nan"), 0.0, 1.0)


def test_look_up_option_suggests_closest():
    assert look_up_option("norm", "batch", ["batch", "instance"]) == "batch"
    with pytest.raises(ConfigError, match="Did you mean 'instance'"):
        look_up_option("norm", "instanse", ["batch", "instance"])


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "m.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert os.listdir(p.parent) == ["m.json"]


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_load_weights_round_trip_and_errors(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()
    p = atomic_torch_save(sd, tmp_path / "model.pt")
    out = load_weights(p)
    assert torch.equal(out["weight"], sd["weight"])
    with pytest.raises(DatasetError, match="checkpoint not found"):
        load_weights(tmp_path / "missing.pt")
    (tmp_path / "trunc.pt").write_bytes(p.read_bytes()[:50])
    with pytest.raises(DatasetError, match="trunc.pt: not a readable torch checkpoint"):
        load_weights(tmp_path / "trunc.pt")


def test_load_weights_refuses_pickled_objects(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, p)  # a pickled module, not a state_dict
    with pytest.raises(DatasetError, match="obj.pt"):
        load_weights(p)


def test_configure_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        monkeypatch.setenv("TLK_NUM_THREADS", "2")
        assert configure_threads(None) == 2
        with pytest.raises(ConfigError, match="num_threads=-1"):
            configure_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device='gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("value,expected", [(True, True), ("true", True), ("False", False), ("1", True), ("no", False)])
def test_parse_flag(value, expected):
    from tlk_components.utils import parse_flag

    assert parse_flag("saliency", value) is expected


def test_ill_parse_flag():
    from tlk_components.utils import parse_flag

    with pytest.raises(ConfigError, match="saliency='maybe': expected true or false"):
        parse_flag("saliency", "maybe")


def test_configure_threads_shares_cores_between_torchrun_processes(monkeypatch):
    from tlk_components.utils import runtime

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("TLK_NUM_THREADS", raising=False)
        monkeypatch.setattr(runtime, "_available_cores", lambda: 8)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert configure_threads(0) == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert configure_threads(0) == 1
    finally:
        torch.set_num_threads(before)
