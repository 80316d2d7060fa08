# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Box sensitivity/PPV, per-volume IoU statistics and COCO-style AP as ignite metrics."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from ignite.engine import Engine

from tlk_components.engines.evaluators.box_metrics import (
    BoxAveragePrecision,
    BoxPPV,
    BoxSensitivity,
    VolumeIoU,
    volume_iou_values,
)
from tlk_components.utils.errors import ConfigError


def pred(boxes, scores):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": b,
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.ones(len(b), dtype=torch.long),
    }


def gt(boxes):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.ones(len(b), dtype=torch.long)}


# one volume, three slices: a hit (IoU 0.8), a miss plus a false positive, and an empty slice
VOLUME = {
    "case": "v1",
    "pred": [pred([[0, 0, 10, 10]], [0.9]), pred([[50, 50, 60, 60], [0, 0, 4, 4]], [0.8, 0.3]), pred([], [])],
    "gt": [gt([[0, 0, 10, 8]]), gt([[20, 20, 30, 30]]), gt([])],
}


def run(metric, outputs):
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "m")
    engine.run(outputs, max_epochs=1)
    return engine.state.metrics


def test_sensitivity_and_ppv():
    assert run(BoxSensitivity(iou_threshold=0.5), [VOLUME])["m"] == pytest.approx(1 / 2)
    assert run(BoxPPV(iou_threshold=0.5), [VOLUME])["m"] == pytest.approx(1 / 2)  # the 0.3 box is below threshold
    assert run(BoxPPV(iou_threshold=0.5, score_threshold=0.2), [VOLUME])["m"] == pytest.approx(1 / 3)
    assert run(BoxSensitivity(iou_threshold=0.9), [VOLUME])["m"] == 0.0


def test_volume_iou_statistics_and_missed_tumours(tmp_path):
    values = volume_iou_values(VOLUME["pred"], VOLUME["gt"], 0.5, penalise_missed=True)
    assert sorted(values) == pytest.approx([0.0, 0.0, 0.8])  # FP -> 0, hit -> 0.8, missed GT -> 0
    jarvis = volume_iou_values(VOLUME["pred"], VOLUME["gt"], 0.5, penalise_missed=False)
    assert sorted(jarvis) == pytest.approx([0.0, 0.8])
    perfect = {"case": "v2", "pred": [pred([[0, 0, 10, 10]], [0.9])], "gt": [gt([[0, 0, 10, 10]])]}
    empty = {"case": "v3", "pred": [pred([], [])], "gt": [gt([])]}  # tumour-free and nothing predicted
    metric = VolumeIoU(csv_path=tmp_path / "t.csv")
    m = run(metric, [VOLUME, perfect, empty])
    # per-volume medians 0.0 and 1.0; the empty volume is listed but not counted
    assert m["volume_iou_median"] == pytest.approx(0.5)
    assert m["m"]["volume_iou_p75"] == pytest.approx(m["volume_iou_p75"])
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["case"] for r in rows] == ["v1", "v2", "v3"]
    assert rows[2]["iou_median"] == "" and rows[1]["iou_median"] == "1.0"
    assert math.isnan(run(VolumeIoU(), [empty])["volume_iou_median"])


def test_average_precision():
    perfect = {"case": "a", "pred": [pred([[0, 0, 10, 10]], [0.9]), pred([], [])], "gt": [gt([[0, 0, 10, 10]]), gt([])]}
    assert run(BoxAveragePrecision(0.5), [perfect])["m"] == pytest.approx(1.0)
    # a false positive scored above the true positive halves the precision at full recall
    fp_first = {
        "case": "b",
        "pred": [pred([[0, 0, 10, 10]], [0.5]), pred([[40, 40, 50, 50]], [0.9])],
        "gt": [gt([[0, 0, 10, 10]]), gt([])],
    }
    assert run(BoxAveragePrecision(0.5), [fp_first])["m"] == pytest.approx(0.5, abs=0.01)
    # IoU 0.8 hit counts at 0.5, not at 0.85
    assert run(BoxAveragePrecision(0.5), [VOLUME])["m"] > 0
    assert BoxAveragePrecision(0.1).key == "AP_IoU_0.10_MaxDet_100"
    no_gt = {"case": "c", "pred": [pred([[0, 0, 5, 5]], [0.9])], "gt": [gt([])]}
    assert math.isnan(run(BoxAveragePrecision(0.5), [no_gt])["m"])


def test_ill_metric_input():
    with pytest.raises(ValueError, match="no ground truth"):
        run(BoxSensitivity(), [{"case": "x", "pred": [pred([], [])], "gt": None}])
    with pytest.raises(ConfigError, match="iou_threshold"):
        BoxPPV(iou_threshold=0.0)
