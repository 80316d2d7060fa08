# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of the zoo operations.

1. Download + verify + extract one released bundle with ``tlk_components.zoo.download.download_bundle`` (index
   read, sha256 check, archive check, atomic extraction) against plain ``monai.bundle.download(name=..., url=...)``
   of the same zip (fetch + extract, no checksum), both from the same local ``http.server`` and from ``file://``.
   Target: ours / MONAI <= 1.2 (the checksum is not free but must be cheap).
2. Wall time of ``python -m tlk_components verify --all`` (a fresh process, imports included).

The bundle is copied to a temporary folder; when it has no trained ``models/model.pt`` the copy gets a randomly
initialised one of its own network (the size a release carries), so the archive is realistic.

Usage::

    TLK_NUM_THREADS=2 python benchmarks/bench_zoo.py [--bundles mnist_mlp_classification,...] [--repeats 7]

Every bundle is measured (``--bundles`` picks some). The last line printed is one JSON object: ``download_ratio``
(sum over the bundles of our median time / the same sum for MONAI, over HTTP: the cost of fetching the whole zoo),
``download_ratio_max`` (the worst single bundle), ``verify_all_s`` and the detailed timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from tlk_components.zoo.download import download_bundle  # noqa: E402
from tlk_components.zoo.package import bundle_files, package_bundle  # noqa: E402
from tlk_components.zoo.registry import list_bundles  # noqa: E402


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _release(bundle: Path, work: Path) -> tuple[Path, str]:
    """Copy the bundle (adding initial weights when untrained), package it; returns (release dir, zip name)."""
    copy = work / "src" / bundle.name
    for rel in bundle_files(bundle):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle / rel, copy / rel)
    inference = json.loads((copy / "configs" / "inference.json").read_text())
    for net_id in sorted(k for k in inference if k == "network_def" or k.startswith("network_def_")):
        weights = copy / "models" / f"model{net_id[len('network_def') :]}.pt"
        if weights.is_file():
            continue
        parser = ConfigParser()
        parser.read_config(str(copy / "configs" / "inference.json"))
        parser["bundle_root"] = str(copy)
        try:
            net = parser.get_parsed_content(net_id)
        except Exception as e:  # noqa: BLE001 - e.g. a network that needs training outputs; released without
            print(f"  {bundle.name}: no weights for {net_id} ({type(e).__name__}); packaged without them")
            continue
        weights.parent.mkdir(exist_ok=True)
        torch.save(net.state_dict(), weights)
    untrained = not (copy / "models" / "model.pt").is_file()
    entry = package_bundle(copy, work / "release", base_url=".", allow_untrained=untrained)
    return work / "release", Path(entry["zip"]).name


def _time(fn: Callable[[Path], object], work: Path, tag: str, i: int) -> float:
    target = work / f"{tag}_{i}"
    t0 = time.perf_counter()
    fn(target)
    dt = time.perf_counter() - t0
    shutil.rmtree(target, ignore_errors=True)
    return dt


def _bench_download(name: str, release: Path, zip_name: str, work: Path, repeats: int, base: str) -> dict[str, float]:
    from monai.bundle import download as monai_download

    index, zip_url = f"{base}/model_info.json", f"{base}/{zip_name}"

    def ours(target: Path) -> None:
        download_bundle(name, index, target)

    def theirs(target: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            monai_download(name=name, url=zip_url, bundle_dir=str(target), progress=False)
        if not (target / name / "configs" / "metadata.json").is_file():
            raise RuntimeError(f"MONAI download produced no bundle in {target / name}")

    ours(work / "warm_ours")  # warm caches and imports for both
    theirs(work / "warm_monai")
    t_ours, t_monai = [], []
    for i in range(repeats):  # interleaved so drift hits both
        t_ours.append(_time(ours, work, "ours", i))
        t_monai.append(_time(theirs, work, "monai", i))
    m_ours, m_monai = statistics.median(t_ours), statistics.median(t_monai)
    return {"ours_s": m_ours, "monai_s": m_monai, "ratio": m_ours / m_monai}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="", help="comma-separated bundle names (default: every bundle)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    bundles = list_bundles()
    names = [n for n in args.bundles.split(",") if n] or sorted(bundles)
    unknown = sorted(set(names) - set(bundles))
    if not bundles or unknown:
        raise SystemExit(f"unknown or no bundles {unknown}; bundles found: {sorted(bundles)}")
    rows: dict[str, dict[str, dict[str, float]]] = {}
    print(f"download + verify + extract, ours vs monai.bundle.download --url, median of {args.repeats} runs")
    for name in names:
        with tempfile.TemporaryDirectory(prefix="bench_zoo_") as tmp:
            work = Path(tmp)
            try:
                release, zip_name = _release(bundles[name], work)
            except Exception as e:  # noqa: BLE001 - a bundle that cannot be released is reported, not benchmarked
                print(f"  {name}: skipped, cannot be packaged ({type(e).__name__}: {str(e).splitlines()[0][:150]})")
                continue
            size_mb = (release / zip_name).stat().st_size / 1e6
            with _serve(release) as url:
                http_res = _bench_download(name, release, zip_name, work, args.repeats, url)
            file_res = _bench_download(name, release, zip_name, work, args.repeats, release.resolve().as_uri())
        rows[name] = {"http": http_res, "file": file_res, "zip_mb": {"": size_mb}}
        for label, r in (("http", http_res), ("file", file_res)):
            print(
                f"  {name:36s} {size_mb:7.2f} MB {label}: ours {r['ours_s'] * 1e3:7.1f} ms | "
                f"monai {r['monai_s'] * 1e3:7.1f} ms | ratio {r['ratio']:.2f}"
            )
    if not rows:
        raise SystemExit("no bundle could be packaged")

    def total(mode: str, who: str) -> float:
        return sum(r[mode][who] for r in rows.values())

    ratio_http = total("http", "ours_s") / total("http", "monai_s")
    ratio_file = total("file", "ours_s") / total("file", "monai_s")
    print(f"all {len(rows)} bundles: http ratio {ratio_http:.2f}, file ratio {ratio_file:.2f} (target <= 1.2)")

    env = dict(os.environ, TLK_NUM_THREADS=os.environ.get("TLK_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tlk_components", "verify", "--all"], capture_output=True, text=True, env=env, cwd=REPO
    )
    verify_s = time.perf_counter() - t0
    out = (proc.stdout + proc.stderr).strip().splitlines()
    print(f"verify --all: {verify_s:.1f} s, exit {proc.returncode}: {out[-1] if out else ''}")
    print(
        json.dumps(
            {
                "download_ratio": round(ratio_http, 3),
                "download_ratio_file": round(ratio_file, 3),
                "download_ratio_max": round(max(r["http"]["ratio"] for r in rows.values()), 3),
                "per_bundle_http_ratio": {n: round(r["http"]["ratio"], 3) for n, r in rows.items()},
                "download_ours_ms": round(total("http", "ours_s") * 1e3, 1),
                "download_monai_ms": round(total("http", "monai_s") * 1e3, 1),
                "zip_mb": round(sum(r["zip_mb"][""] for r in rows.values()), 3),
                "verify_all_s": round(verify_s, 2),
                "verify_all_exit": proc.returncode,
                "n_bundles": len(bundles),
            }
        )
    )


if __name__ == "__main__":
    main()
