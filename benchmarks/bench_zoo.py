# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of the zoo operations (issue 7).

1. Download + verify + extract one released bundle with ``tlk_components.zoo.download.download_bundle`` (index
   read, sha256 check, archive check, atomic extraction) against plain ``monai.bundle.download(name=..., url=...)``
   of the same zip (fetch + extract, no checksum), both from the same local ``http.server`` and from ``file://``.
   Target: ours / MONAI <= 1.2 (the checksum is not free but must be cheap).
2. Wall time of ``python -m tlk_components verify --all`` (a fresh process, imports included).

The bundle is copied to a temporary folder; when it has no trained ``models/model.pt`` the copy gets a randomly
initialised one of its own network (the size a release carries), so the archive is realistic.

Usage::

    TLK_NUM_THREADS=2 python benchmarks/bench_zoo.py [--bundle mnist_mlp_classification] [--repeats 7]

The last line printed is one JSON object: ``download_ratio`` (median ours / median MONAI over the HTTP runs),
``verify_all_s`` and the detailed timings.
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
    if not (copy / "models" / "model.pt").is_file():
        import torch
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(copy / "configs" / "inference.json"))
        parser["bundle_root"] = str(copy)
        net = parser.get_parsed_content("network_def")
        (copy / "models").mkdir(exist_ok=True)
        torch.save(net.state_dict(), copy / "models" / "model.pt")
    entry = package_bundle(copy, work / "release", base_url=".")
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
        assert (target / name / "configs" / "metadata.json").is_file(), "MONAI download produced no bundle"

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
    ap.add_argument("--bundle", default=None, help="bundle to release (default: mnist_mlp_classification or the first)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    bundles = list_bundles()
    if not bundles:
        raise SystemExit("no bundles found under bundles/")
    name = args.bundle or ("mnist_mlp_classification" if "mnist_mlp_classification" in bundles else sorted(bundles)[0])
    with tempfile.TemporaryDirectory(prefix="bench_zoo_") as tmp:
        work = Path(tmp)
        release, zip_name = _release(bundles[name], work)
        size_mb = (release / zip_name).stat().st_size / 1e6
        print(f"bundle {name}: release zip {zip_name} {size_mb:.2f} MB, {args.repeats} runs each (median)")
        with _serve(release) as url:
            http_res = _bench_download(name, release, zip_name, work, args.repeats, url)
        file_res = _bench_download(name, release, zip_name, work, args.repeats, release.resolve().as_uri())
        for label, r in (("http", http_res), ("file", file_res)):
            print(
                f"  {label}: ours (index + sha256 + checks + atomic extract) {r['ours_s'] * 1e3:7.1f} ms | "
                f"monai.bundle.download --url {r['monai_s'] * 1e3:7.1f} ms | ratio {r['ratio']:.2f} (target <= 1.2)"
            )

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
                "download_ratio": round(http_res["ratio"], 3),
                "download_ratio_file": round(file_res["ratio"], 3),
                "download_ours_ms": round(http_res["ours_s"] * 1e3, 1),
                "download_monai_ms": round(http_res["monai_s"] * 1e3, 1),
                "zip_mb": round(size_mb, 3),
                "bundle": name,
                "verify_all_s": round(verify_s, 2),
                "verify_all_exit": proc.returncode,
                "n_bundles": len(bundles),
            }
        )
    )


if __name__ == "__main__":
    main()
