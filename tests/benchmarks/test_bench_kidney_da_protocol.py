# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The honest protocol of ``benchmarks/bench_kidney_da.py``: what each stage reads, and that no setting depends on
the table's test labels.

The bundle stages are replaced by a fake ``monai.bundle run`` that records each call and writes the files the
benchmark reads back (times, the oracle's history, Dice per model), with Dice values drawn from a hash of (data seed,
split, model, stage). Perturbing the test split's values must change the table and nothing the benchmark chooses.
The configs' own side (the adapter's lists carry no labels, the oracle selects on dev) is
``tests/workflows/test_kidney_pipeline.py::test_honest_split_adapter_and_oracle_selection_never_see_test_cases``.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kidney_da.py"
ARGS = ["--dev_seed", "0", "--data_seeds", "1,2", "--train_seeds", "0,1", "--prior_scales", "0.5,2"]


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_kidney_da_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.calls = []
    mod.salt = {"test": "", "dev": ""}  # changes the fake Dice of one split

    def fake_run(configs: list[str], log: Path, **o: Any) -> float:
        out = Path(o["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        seed = Path(o["dataset_dir"]).name
        split = "test"
        if "target_test_list" in o:
            split = o["target_test_list"].split("target_datalist('")[1].split("'")[0]
        mod.calls.append({"configs": tuple(configs), "seed": seed, "split": split, "overrides": o})

        def dice(key: str) -> float:
            h = zlib.crc32(f"{seed}|{split}|{key}|{out.name}|{mod.salt[split]}".encode())
            return 0.5 + (h % 4000) / 10000

        if "evaluate.json" in configs:
            metrics = {f"target_mean_dice_kidney_{k}": dice(k) for k in o["checkpoints"]}
            metrics.update({f"target_mean_dice_kidney_parenchyma_{k}": dice(k + "p") for k in o["checkpoints"]})
            metrics.update({f"target_tumour_recall_{k}": dice(k + "t") - 0.5 for k in o["checkpoints"]})
            (out / "metrics.json").write_text(json.dumps(metrics))
        elif "oracle.json" in configs:
            hist = [{"time_s": 10.0 * (i + 1), "val_dice": dice("oracle") * (i + 1) / 4} for i in range(4)]
            best = max(h["val_dice"] for h in hist)
            (out / "oracle_history.json").write_text(json.dumps({"metric": "val_dice", "best": best, "history": hist}))
            (out / "oracle_time.json").write_text(json.dumps({"train_time_s": 40.0}))
        elif "pretrain.json" in configs:
            (out / "pretrain_time.json").write_text(json.dumps({"train_time_s": 30.0}))
        else:
            (out / "adapt_time.json").write_text(json.dumps({"train_time_s": 5.0}))
        return 1.0

    def fake_data(folder: Path, seed: int, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    monkeypatch.setattr(mod, "_run", fake_run)
    monkeypatch.setattr(mod, "write_data", fake_data)
    monkeypatch.setattr(mod, "_target_split", lambda run, split: [{}] * (4 if split == "dev" else 10))
    monkeypatch.setattr(mod.Run, "adabn", lambda self: {"time_s": 0.1, "ckpt": str(self.root / "adabn.pt")})
    return mod


def _kind(call: dict[str, Any]) -> str:
    c = call["configs"]
    if "evaluate.json" in c:
        return "evaluate"
    if "oracle.json" in c:
        return "supervised_target"
    return "pretrain" if "pretrain.json" in c else "adapt"


def test_selection_reads_only_its_own_seed_and_table_test_labels_only_score(bench, tmp_path: Path) -> None:
    res = bench.main([*ARGS, "--out", str(tmp_path / "a")])
    calls = bench.calls
    table_seeds = {"data_1", "data_2"}
    first_table = next(i for i, c in enumerate(calls) if c["seed"] in table_seeds)
    # selection (λ and adapter) runs first, on the selection seed only; the table never returns to it
    assert {c["seed"] for c in calls[:first_table]} == {"data_0"}
    assert all(c["seed"] in table_seeds for c in calls[first_table:])
    # DANN's λ is scored on dev cases only
    lam_evals = [c for c in calls[:first_table] if _kind(c) == "evaluate" and "dann" in str(c["overrides"])]
    assert len(lam_evals) == 3 and {c["split"] for c in lam_evals} == {"dev"}
    # training stages never point a list at other cases than the bundle's own split (train, checkpoint on dev)
    for c in calls:
        if _kind(c) != "evaluate":
            assert not any("list" in k or "datalist" in str(v) for k, v in c["overrides"].items()), c
    # on the table's seeds the only test reads are evaluations of trained models; dev is read only for the
    # adapter's time-to-its-Dice on the oracle's curve
    table_evals = [c for c in calls[first_table:] if _kind(c) == "evaluate"]
    assert {c["split"] for c in table_evals} == {"test", "dev"}
    assert all(set(c["overrides"]["checkpoints"]) == {"adapted"} for c in table_evals if c["split"] == "dev")
    assert res["n_data_seeds"] == 2 and res["n_train_seeds"] == 2
    assert {"dice_parenchyma_oracle", "tumour_recall_source_only", "source_only_parenchyma_gap_points"} <= set(res)


def test_no_choice_depends_on_test_labels(bench, tmp_path: Path) -> None:
    a = bench.main([*ARGS, "--out", str(tmp_path / "a")])
    bench.salt["test"] = "other test labels"
    b = bench.main([*ARGS, "--out", str(tmp_path / "b")])
    # the table moves with the test labels (so the fake reaches it) ...
    assert a["dice_adapted"] != b["dice_adapted"] and a["dice_source_only"] != b["dice_source_only"]
    # ... and the chosen λ and the dev-based figures do not
    assert a["dann_lambda"] == b["dann_lambda"]
    assert [r["dev"] for r in a["adapter_selection"].values()] == [r["dev"] for r in b["adapter_selection"].values()]
    bench.salt["test"] = ""
    bench.salt["dev"] = "other dev labels"
    c = bench.main([*ARGS, "--out", str(tmp_path / "c")])
    assert c["dice_adapted"] == a["dice_adapted"]  # dev labels do not reach the table's Dice
    assert [r["dev"] for r in a["adapter_selection"].values()] != [r["dev"] for r in c["adapter_selection"].values()]


def test_selection_seed_must_not_be_a_table_seed(bench, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--dev_seed", "1", "--data_seeds", "1,2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--dev_seed 1 is also in --data_seeds 1,2" in err and "pick a --dev_seed outside" in err
    assert bench.calls == []
