# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk verify``: check a bundle the way the MONAI Model Zoo's CI does, offline and on CPU.

Checks (each named in the report; a failed check lists what to fix):

* ``metadata`` — ``configs/metadata.json`` against the shipped schema (:func:`~tlk_components.zoo.metadata.metadata_errors`).
* ``files`` — LICENSE, configs/{metadata,train,evaluate,inference,multi_gpu_train}.json, configs/logging.conf,
  docs/README.md.
* ``config_keys`` — the keys MONAI's ``TrainProperties``/``InferProperties`` and the zoo's naming rules expect
  (bundles/README.md), and ``configure_threads`` in every ``initialize``.
* ``overrides`` — ``evaluate.json`` and ``multi_gpu_train.json`` hold only overrides of ``train.json``: no forked
  copy of ``train``/``validate``, no id whose parent ``train.json`` lacks (a typo); an unchanged duplicate is a
  warning. ``multi_gpu_train.json`` initialises the process group, wraps the network in DDP and shards the data.
* ``portable`` — no bundle-local ``scripts/`` and no ``_target_: scripts.*`` (the bundle runs from any directory).
* ``readme_metrics`` — every ``eval_metrics`` key has a ``| <key> | <value> |`` row under ``## Performance`` in
  docs/README.md with the same value.
* ``net_in_out`` — MONAI's ``verify_net_in_out`` on ``inference.json`` (fake input from ``network_data_format``).
* ``torchscript`` — MONAI's ``ckpt_export`` by scripting, as the zoo's CI does (weights from ``models/model.pt``,
  else a random initialisation saved to a temporary file), reloaded with ``torch.jit.load`` and compared with the
  eager network on the same input; a shipped ``models/model.ts`` is compared too.
* ``zoo_layout`` — the MONAI Model Zoo CI's directory check (``configs/metadata.json``, ``LICENSE``; preferred
  ``models/model.pt`` and ``configs/inference.json``) and ``docs/data_license.txt``.
* ``json_format`` — configs as the zoo's pre-commit ``pretty-format-json --indent=4 --no-sort-keys`` writes them.
* ``weights`` — which weights the network checks load (``models/model.pt`` and its sha256, or a random
  initialisation, said as a warning), and the files ``large_files.yml`` lists (present, hash as recorded).
* ``properties`` — MONAI's ``ConfigWorkflow(workflow_type="train"|"infer").check_properties()`` on
  ``train.json`` and ``inference.json`` after ``initialize()``, on the bundle's tiny demo dataset written to a
  temporary folder (what MONAI Label, Deploy and FL rely on).

The network checks run for ``network_def`` and for each ``network_def_<name>`` of a multi-network bundle (weights
``models/model_<name>.pt``, TorchScript ``models/model_<name>.ts``).

Trust: ``net_in_out``, ``torchscript`` and ``properties`` (:data:`CODE_CHECKS`) build the bundle's configs, which
runs code from them (``_target_`` callables, ``$`` expressions evaluated by Python). They run by default only for
this checkout's own bundles (``<repo>/bundles/``); for any other folder (a downloaded bundle) only the file checks
run and the report says how to run the rest: ``trust=True`` (``tlk verify PATH --trust``), after reading its
configs. MONAI's warnings about executing config code are never silenced, and ``trust=True`` on a bundle outside
this checkout warns once itself.

Everything is driven by the bundle's files; adding a bundle under ``bundles/`` is enough for ``verify --all``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlk_components.utils.errors import TLKError
from tlk_components.utils.io import atomic_torch_save, load_weights
from tlk_components.zoo.metadata import metadata_errors
from tlk_components.zoo.registry import find_bundle, list_bundles, no_bundles_hint, source_bundles

__all__ = [
    "ALL_CHECKS",
    "CODE_CHECKS",
    "REQUIRED_FILES",
    "STATIC_CHECKS",
    "CheckResult",
    "VerifyError",
    "VerifyReport",
    "is_checkout_bundle",
    "readme_metrics",
    "verify_all",
    "verify_bundle",
    "verify_cmd",
]

#: Files every bundle ships (paths relative to the bundle folder).
REQUIRED_FILES: tuple[str, ...] = (
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
)

#: Marks the network key: ``network_def``, or ``network_def_<name>`` for each network of a multi-network bundle.
NETWORK_KEY = "network_def*"

#: Keys of train.json (nested ids use ``#``); tuples are alternatives (one of them must exist). Bundles whose
#: engine builds its own data loaders (e.g. co-training) need no ``train#dataset``, so it is not required.
TRAIN_KEYS: tuple[str | tuple[str, ...], ...] = (
    "bundle_root",
    "device",
    "dataset_dir",
    "output_dir",
    NETWORK_KEY,
    "train#trainer",
    ("train#trainer#max_epochs", "epochs"),
    "validate#evaluator",
    "initialize",
    "run",
)

#: Keys of inference.json (reference §1.5 plus the ``--input_dir`` of the command-line contract). An engine that
#: runs the network itself (an evaluator or predictor) stands in for a separate ``inferer``.
INFERENCE_KEYS: tuple[str | tuple[str, ...], ...] = (
    "bundle_root",
    "device",
    NETWORK_KEY,
    ("inferer", "evaluator", "predictor"),
    "input_dir",
    "output_dir",
    "initialize",
    "run",
)

#: Checks that read files only (fast; ``package`` runs these).
STATIC_CHECKS: tuple[str, ...] = (
    "metadata",
    "files",
    "zoo_layout",
    "json_format",
    "config_keys",
    "overrides",
    "portable",
    "readme_metrics",
    "weights",
)
#: Checks that build the bundle's configs, so run code from them: only for trusted bundles (see ``trust``).
CODE_CHECKS: tuple[str, ...] = ("net_in_out", "torchscript", "properties")
#: All checks, in report order: the static ones, then those that build the networks and the workflows.
ALL_CHECKS: tuple[str, ...] = (*STATIC_CHECKS, *CODE_CHECKS)
#: How MONAI words the risk of parsing a config (monai.bundle.scripts; GHSA-873f-pvrv-4x83).
_TRUST_ADVISORY = "https://github.com/Project-MONAI/MONAI/security/advisories/GHSA-873f-pvrv-4x83"

#: What the MONAI Model Zoo's ``ci/verify_bundle.py`` requires (``necessary_files_list``) and prefers
#: (``models/model.pt``, ``configs/inference.json``; a missing preferred file is a warning there and here).
ZOO_NECESSARY_FILES: tuple[str, ...] = ("configs/metadata.json", "LICENSE")
ZOO_PREFERRED_FILES: tuple[str, ...] = ("models/model.pt", "configs/inference.json")
#: Third-party data licence file of every bundle (the zoo asks for it when the data has licence conditions).
DATA_LICENSE = "docs/data_license.txt"
#: MONAI workflow types and the config each is checked on (``ConfigWorkflow.check_properties``).
WORKFLOW_CONFIGS: tuple[tuple[str, str], ...] = (("train", "configs/train.json"), ("infer", "configs/inference.json"))

_OVERRIDE_FILES = ("evaluate.json", "multi_gpu_train.json")
#: What multi_gpu_train.json must contain (any of the spellings): process group, DDP wrapper, data sharding.
_DIST_MARKERS = (
    (
        ("init_distributed", "init_process_group"),
        "initialise the process group (tlk_components.utils.distributed.init_distributed: NCCL on GPU, gloo on CPU)",
    ),
    (("DistributedDataParallel",), "wrap the network in torch.nn.parallel.DistributedDataParallel"),
    (
        ("DistributedSampler", "num_replicas"),
        "shard the training data per rank (monai.data.DistributedSampler, a loader's num_replicas/rank, or an "
        "engine's '...#distributed': true)",
    ),
)
_SHARDING = _DIST_MARKERS[2][0]
_ROW = re.compile(r"^\s*\|\s*`?([^|`]+?)`?\s*\|\s*([^|]+?)\s*\|")
_NON_TENSOR_TYPES = {"object", "dict", "list", "tuple", "boxes"}


class VerifyError(TLKError):
    """A bundle failed verification; the message lists every failed check and what to fix."""


@dataclass
class CheckResult:
    """Outcome of one named check.

    Args:
        name: check name (one of :data:`ALL_CHECKS`).
        problems: one line per problem, each saying what to fix; empty when the check passed.
        warnings: advice that does not fail the check (e.g. an override file repeating a key unchanged).
        skipped: reason the check did not apply (then ``problems`` is empty).
        detail: what was checked, for the report (e.g. ``"max |ts - eager| = 0"``).
        seconds: wall time of the check.
    """

    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: str = ""
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.problems:
            status = "FAIL"
        elif self.skipped:
            status = "skip"
        else:
            status = "ok"
        note = self.skipped or self.detail
        text = f"  [{status:4s}] {self.name}" + (f" — {note}" if note else "")
        return "\n".join(
            [text, *(f"         - {p}" for p in self.problems), *(f"         ! {w}" for w in self.warnings)]
        )


@dataclass
class VerifyReport:
    """Every check of one bundle.

    Attributes:
        bundle: bundle name (folder name).
        path: bundle folder.
        checks: results in :data:`ALL_CHECKS` order.
        untrusted: the code checks asked for but not run, because the bundle is not trusted (see ``trust`` in
            :func:`verify_bundle`); the summary then says how to run them.
    """

    bundle: str
    path: Path
    checks: list[CheckResult] = field(default_factory=list)
    untrusted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in the report; checks run: {[c.name for c in self.checks]}")

    def summary(self) -> str:
        head = f"{self.bundle} ({self.path}): {'OK' if self.ok else 'FAILED ' + ', '.join(self.failed)}"
        if self.untrusted:
            head += " (file checks only)"
        return "\n".join([head, *(c.line() for c in self.checks), *([self.trust_note()] if self.untrusted else [])])

    def trust_note(self) -> str:
        """What was not run on an untrusted bundle and how to run it ("" when everything asked for ran)."""
        if not self.untrusted:
            return ""
        return (
            f"  note: {', '.join(self.untrusted)} not run: they execute code from the bundle's configs (_target_ "
            f"callables, '$' expressions), and {self.path} is not one of this checkout's bundles. Read its configs, "
            f"then run them with `tlk verify {self.path} --trust` (Python: verify_bundle(..., trust=True))"
        )

    def raise_if_bad(self) -> None:
        """Raise :class:`VerifyError` with the full summary when any check failed."""
        if not self.ok:
            raise VerifyError(self.summary())


# --------------------------------------------------------------------------------------------------------------
# helpers


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _split_id(key: str) -> list[str]:
    return [p for p in re.split(r"::|#", key.lstrip("+")) if p != ""]


def _lookup(config: Any, key: str) -> tuple[bool, Any]:
    """Find a nested id (``a#b#0``) in a raw config; returns (found, value)."""
    node = config
    for part in _split_id(key):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _iter_strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _iter_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _iter_strings(v)


def _iter_targets(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        t = node.get("_target_")
        if isinstance(t, str):
            yield t
        for v in node.values():
            yield from _iter_targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _iter_targets(v)


def readme_metrics(readme: str | os.PathLike) -> dict[str, str]:
    """The ``| <key> | <value> |`` rows of the ``## Performance`` section of a bundle README.

    The section ends at the next heading of level 1 or 2 outside fenced code blocks. Header and separator rows are returned too (their values
    are not numbers); callers look up the keys they need.

    Returns:
        row key -> value text (first occurrence wins).

    Raises:
        VerifyError: the README has no ``## Performance`` section.
    """
    lines = Path(readme).read_text(encoding="utf-8").splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"^##\s+Performance\s*$", ln.strip())), None)
    if start is None:
        raise VerifyError(f"{readme}: no '## Performance' section; add one with a row '| <metric> | <value> |' per key")
    rows: dict[str, str] = {}
    in_fence = False
    for ln in lines[start + 1 :]:
        if ln.lstrip().startswith("```"):
            in_fence = not in_fence  # a '# comment' inside a code block is not a heading
            continue
        if in_fence:
            continue
        if re.match(r"^#{1,2}\s", ln):
            break
        m = _ROW.match(ln)
        if m:
            rows.setdefault(m.group(1).strip(), m.group(2).strip())
    return rows


def _fake_input(meta: dict[str, Any]) -> torch.Tensor:
    """A random input shaped as ``network_data_format.inputs.image`` declares (symbolic sizes at their minimum)."""
    from monai.bundle.scripts import _get_fake_spatial_shape  # the same rule verify_net_in_out uses

    image = meta["network_data_format"]["inputs"]["image"]
    shape = _get_fake_spatial_shape(image["spatial_shape"], p=1, n=1, any=1)
    gen = torch.Generator().manual_seed(0)
    return torch.rand((1, int(image["num_channels"]), *shape), generator=gen)


def _max_abs_diff(a: Any, b: Any, path: str = "output") -> float:
    """Largest absolute difference between two (nested) network outputs; raises when their structure differs."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            raise ValueError(f"{path}: shape {tuple(b.shape)} (TorchScript) != {tuple(a.shape)} (eager)")
        if a.numel() == 0:
            return 0.0
        return float((a.detach().float() - b.detach().float()).abs().max())
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise ValueError(f"{path}: keys {sorted(b)} (TorchScript) != {sorted(a)} (eager)")
        return max((_max_abs_diff(a[k], b[k], f"{path}[{k!r}]") for k in a), default=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            raise ValueError(f"{path}: {len(b)} items (TorchScript) != {len(a)} (eager)")
        return max(
            (_max_abs_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))), default=0.0
        )
    raise ValueError(f"{path}: cannot compare {type(a).__name__} (eager) with {type(b).__name__} (TorchScript)")


def _short(e: BaseException) -> str:
    """First line of an error, plus its last line of words when the message is long (e.g. a tracer's verdict)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if re.search(r"[A-Za-z]{3}", ln)]
    text = lines[0][:300] if lines else ""
    if len(lines) > 1:
        text += f" … {lines[-1][:300]}"
    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    if root is not e:  # MONAI wraps config errors ("Failed to evaluate ..."); the root cause says what to fix
        text += f" (caused by {_short(root)})"
    return f"{type(e).__name__}: {text}"


def _network_ids(config: dict[str, Any]) -> list[str]:
    """``network_def`` and every ``network_def_<name>`` at the top level of a config, sorted."""
    return sorted(k for k in config if k == "network_def" or k.startswith("network_def_"))


def _weights_for(path: Path, net_id: str, ext: str) -> Path:
    """``models/model.<ext>`` for ``network_def``; ``models/model_<name>.<ext>`` for ``network_def_<name>``."""
    suffix = net_id[len("network_def") :]
    return path / "models" / f"model{suffix}.{ext}"


def _keep_warning(w: warnings.WarningMessage) -> bool:
    """Whether a warning caught in :func:`_quiet` is shown: MONAI bundle warnings (config code, references)."""
    if not issubclass(w.category, UserWarning):
        return False  # tracer, deprecation and future warnings of torch/MONAI internals
    text = str(w.message)
    from_bundle = "monai/bundle/" in str(w.filename).replace("\\", "/")
    return from_bundle or "eval()" in text or "_target_" in text or "trust" in text


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence MONAI's input-summary logging, stdout prints and tracer/deprecation warnings during in-process checks.

    Failures are not hidden: they raise, and the checks turn them into problems. Warnings are caught, and those from
    ``monai.bundle`` (e.g. that a config's code is executed) are shown again after the block, on the real stderr.
    """
    level = logging.root.manager.disable
    logging.disable(logging.INFO)
    caught: list[warnings.WarningMessage] = []
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            yield
    finally:
        logging.disable(level)
        for w in caught:
            if _keep_warning(w):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --------------------------------------------------------------------------------------------------------------
# checks


def _check_metadata(path: Path, res: CheckResult) -> None:
    res.problems += [f"{e} (fix configs/metadata.json)" for e in metadata_errors(path / "configs" / "metadata.json")]


def _check_files(path: Path, res: CheckResult) -> None:
    for rel in REQUIRED_FILES:
        if not (path / rel).is_file():
            res.problems.append(f"{rel}: missing; every bundle ships it (see bundles/README.md 'Layout')")
    for rel in (
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
    ):
        p = path / rel
        if p.is_file():
            try:
                _load_json(p)
            except json.JSONDecodeError as e:
                res.problems.append(f"{rel}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")


def _missing_keys(config: dict[str, Any], keys: Sequence[str | tuple[str, ...]], rel: str) -> list[str]:
    problems = []
    for key in keys:
        alts = key if isinstance(key, tuple) else (key,)
        if key == NETWORK_KEY:
            if not _network_ids(config):
                problems.append(
                    f"{rel}: no 'network_def' (or 'network_def_<name>' per network); ckpt_export and "
                    "verify_net_in_out build the network from it"
                )
            continue
        if not any(_lookup(config, k)[0] for k in alts):
            want = " or ".join(f"'{k}'" for k in alts)
            problems.append(f"{rel}: key {want} missing; the zoo's config skeleton (bundles/README.md) requires it")
    init = config.get("initialize", [])
    if "initialize" in config and not any("configure_threads" in s for s in _iter_strings(init)):
        problems.append(
            f"{rel}: 'initialize' does not call tlk_components.utils.configure_threads; add "
            '"$tlk_components.utils.configure_threads(@num_threads)" as its first item'
        )
    return problems


def _check_config_keys(path: Path, res: CheckResult) -> None:
    for rel, keys in (("configs/train.json", TRAIN_KEYS), ("configs/inference.json", INFERENCE_KEYS)):
        p = path / rel
        if not p.is_file():
            res.skipped = res.skipped or f"{rel} missing (see 'files')"
            continue
        try:
            res.problems += _missing_keys(_load_json(p), keys, rel)
        except json.JSONDecodeError:
            res.skipped = res.skipped or f"{rel} is not JSON (see 'files')"


def _check_overrides(path: Path, res: CheckResult) -> None:
    train_p = path / "configs" / "train.json"
    try:
        train = _load_json(train_p)
    except (OSError, json.JSONDecodeError):
        res.skipped = "configs/train.json missing or not JSON (see 'files')"
        return
    for name in _OVERRIDE_FILES:
        p = path / "configs" / name
        try:
            override = _load_json(p)
        except (OSError, json.JSONDecodeError):
            continue  # reported by 'files'
        rel = f"configs/{name}"
        if not isinstance(override, dict):
            res.problems.append(f"{rel}: expected a JSON object of override ids")
            continue
        for key, value in override.items():
            parts = _split_id(key)
            if len(parts) == 1 and parts[0] in ("train", "validate") and parts[0] in train:
                res.problems.append(
                    f"{rel}: redefines the whole '{parts[0]}' section (a fork of train.json); override single ids "
                    f"such as '{parts[0]}#handlers' instead"
                )
                continue
            if not key.startswith("+") and key in train and train[key] == value:
                res.warnings.append(f"{rel}: '{key}' repeats train.json unchanged; remove it (overrides only)")
                continue
            if len(parts) > 1:
                parent = "#".join(parts[:-1])
                if not (_lookup(train, parent)[0] or _lookup(override, parent)[0] or parent in override):
                    res.problems.append(
                        f"{rel}: '{key}' overrides inside '{parent}', which train.json does not define; "
                        "check the id (typo?)"
                    )
    mg = path / "configs" / "multi_gpu_train.json"
    if mg.is_file():
        text = mg.read_text(encoding="utf-8")
        try:  # an engine that shards by itself is switched on with an override such as "train#trainer#distributed"
            engine_shards = any(_split_id(k)[-1] == "distributed" and v is True for k, v in _load_json(mg).items())
        except (json.JSONDecodeError, AttributeError, IndexError):
            engine_shards = False
        for needed, fix in _DIST_MARKERS:
            if needed == _SHARDING and engine_shards:
                continue
            if not any(n in text for n in needed):
                res.problems.append(f"configs/multi_gpu_train.json: no {' / '.join(needed)}; {fix}")


def _check_portable(path: Path, res: CheckResult) -> None:
    if (path / "scripts").exists():
        res.problems.append(
            "scripts/: bundle-local Python breaks `monai.bundle run` from another directory; move the code into "
            "tlk_components and point _target_ there"
        )
    for p in sorted((path / "configs").glob("*.json")):
        try:
            cfg = _load_json(p)
        except (OSError, json.JSONDecodeError):
            continue
        bad = sorted({t for t in _iter_targets(cfg) if t.split(".")[0] == "scripts"})
        bad += sorted({s for s in _iter_strings(cfg) if re.search(r"\bimport\s+scripts\b|\bfrom\s+scripts\b", s)})
        for t in bad:
            res.problems.append(f"configs/{p.name}: '{t}' needs the bundle on sys.path; use a tlk_components target")


def _check_readme(path: Path, res: CheckResult) -> None:
    readme, meta_p = path / "docs" / "README.md", path / "configs" / "metadata.json"
    if not readme.is_file() or not meta_p.is_file():
        res.skipped = "docs/README.md or configs/metadata.json missing (see 'files')"
        return
    try:
        metrics = _load_json(meta_p).get("eval_metrics") or {}
    except json.JSONDecodeError:
        res.skipped = "configs/metadata.json is not JSON (see 'metadata')"
        return
    try:
        rows = readme_metrics(readme)
    except VerifyError as e:
        res.problems.append(str(e))
        return
    for key, value in metrics.items():
        if key not in rows:
            res.problems.append(f"docs/README.md: no row '| {key} | {value} |' under '## Performance'")
            continue
        try:
            shown = float(rows[key].replace("**", "").strip())
        except ValueError:
            res.problems.append(f"docs/README.md: row '{key}' has value {rows[key]!r}; expected the number {value}")
            continue
        if not (isinstance(value, int | float) and math.isfinite(shown) and shown == float(value)):
            res.problems.append(
                f"docs/README.md: '{key}' = {rows[key]} but metadata.json eval_metrics says {value}; "
                "write the measured value in both"
            )
    if not res.problems:
        res.detail = f"{len(metrics)} metric(s) match"


def _inference_files(path: Path) -> tuple[Path, Path, dict[str, Any]]:
    meta_p, inf_p = path / "configs" / "metadata.json", path / "configs" / "inference.json"
    if not meta_p.is_file() or not inf_p.is_file():
        raise FileNotFoundError("configs/metadata.json or configs/inference.json missing (see 'files')")
    return meta_p, inf_p, _load_json(meta_p)


def _output_is_tensor(meta: dict[str, Any]) -> bool:
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred", next(iter(outputs.values()), {})) if isinstance(outputs, dict) else {}
    kind = str(pred.get("type", "")).lower() if isinstance(pred, dict) else ""
    fmt = str(pred.get("format", "")).lower() if isinstance(pred, dict) else ""
    return kind not in _NON_TENSOR_TYPES and fmt not in _NON_TENSOR_TYPES


def _check_net_in_out(path: Path, res: CheckResult, device: str) -> None:
    from monai.bundle import verify_net_in_out

    try:
        meta_p, inf_p, meta = _inference_files(path)
        net_ids = _network_ids(_load_json(inf_p))
    except (FileNotFoundError, json.JSONDecodeError) as e:
        res.skipped = str(e)
        return
    if not _output_is_tensor(meta):
        res.skipped = "network_data_format declares a non-tensor output; verify_net_in_out checks tensors only"
        return
    if not net_ids:
        res.skipped = "configs/inference.json defines no network_def (see 'config_keys')"
        return
    for net_id in net_ids:
        try:
            with _quiet():
                verify_net_in_out(
                    net_id=net_id, meta_file=str(meta_p), config_file=str(inf_p), device=device, bundle_root=str(path)
                )
        except Exception as e:  # noqa: BLE001 - any failure of the user's network is a finding of this check
            res.problems.append(
                f"verify_net_in_out({net_id}) on configs/inference.json: {_short(e)}; make {net_id} accept "
                "network_data_format.inputs.image and return outputs.pred's channels and dtype"
            )
    if not res.problems:
        res.detail = f"{', '.join(net_ids)}: output channels and dtype match network_data_format"


def _parse_network(meta_p: Path, inf_p: Path, path: Path, net_id: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inf_p))
    parser.read_meta(str(meta_p))
    parser["bundle_root"] = str(path)
    return parser.get_parsed_content(net_id, instantiate=True)


def _export_and_compare(
    path: Path, meta_p: Path, inf_p: Path, net_id: str, x: torch.Tensor, res: CheckResult, tmp: Path
) -> str | None:
    """ckpt_export one network, reload it, compare with eager; returns a detail string, or None after a problem."""
    from monai.bundle import ckpt_export

    try:
        with _quiet():
            net = _parse_network(meta_p, inf_p, path, net_id)
    except Exception as e:  # noqa: BLE001
        res.problems.append(f"configs/inference.json: {net_id} cannot be built ({_short(e)})")
        return None
    trained = _weights_for(path, net_id, "pt")
    rel = trained.relative_to(path).as_posix()
    if trained.is_file():
        ckpt, source = trained, rel
        try:
            net.load_state_dict(load_weights(trained))
        except Exception as e:  # noqa: BLE001
            res.problems.append(f"{rel} does not fit {net_id}: {_short(e)}; retrain or fix the config")
            return None
    else:
        torch.manual_seed(0)
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        ckpt, source = tmp / f"{net_id}_random_init.pt", f"random initialisation (no {rel})"
        atomic_torch_save(net.state_dict(), ckpt)
    net.eval()
    ts_path = tmp / f"{net_id}.ts"
    try:
        with _quiet():
            ckpt_export(  # scripting, as the MONAI Model Zoo's CI exports (no tracing fallback)
                net_id=net_id,
                filepath=str(ts_path),
                ckpt_file=str(ckpt),
                meta_file=str(meta_p),
                config_file=str(inf_p),
                use_trace=False,
                bundle_root=str(path),
            )
    except Exception as e:  # noqa: BLE001
        res.problems.append(
            f"ckpt_export({net_id}) by scripting failed ({_short(e)}); the MONAI Model Zoo exports with "
            "torch.jit.script: use TorchScript-compatible code and annotations in the network's forward"
        )
        return None
    method = "scripted"
    tol = 1e-4
    try:
        ts = torch.jit.load(str(ts_path), map_location="cpu")
        ts.eval()
        with torch.no_grad():
            diff = _max_abs_diff(net(x), ts(x))
    except Exception as e:  # noqa: BLE001
        res.problems.append(f"exported TorchScript of {net_id} does not reload or run: {_short(e)}")
        return None
    if not diff <= tol:
        res.problems.append(
            f"TorchScript of {net_id} differs from eager by {diff:.3g} (> {tol}); check non-determinism"
        )
    detail = f"{net_id} {method} from {source}, max |ts - eager| = {diff:.2g}"
    shipped = _weights_for(path, net_id, "ts")
    if shipped.is_file():
        srel = shipped.relative_to(path).as_posix()
        try:
            old = torch.jit.load(str(shipped), map_location="cpu")
            old.eval()
            with torch.no_grad():
                d2 = _max_abs_diff(net(x), old(x))
            if trained.is_file() and not d2 <= tol:
                res.problems.append(
                    f"{srel} differs from {rel} by {d2:.3g}; re-export it with `python -m monai.bundle ckpt_export` "
                    "(it is stale)"
                )
            detail += f"; {srel} max diff {d2:.2g}"
        except Exception as e:  # noqa: BLE001
            res.problems.append(f"{srel} does not load or run: {_short(e)}; re-export it")
    return detail


def _check_torchscript(path: Path, res: CheckResult, device: str) -> None:
    try:
        meta_p, inf_p, meta = _inference_files(path)
        net_ids = _network_ids(_load_json(inf_p))
        x = _fake_input(meta)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        res.skipped = f"cannot build a test input: {_short(e)}"
        return
    if not net_ids:
        res.skipped = "configs/inference.json defines no network_def (see 'config_keys')"
        return
    with tempfile.TemporaryDirectory(prefix="tlk_verify_") as tmp:
        details = [_export_and_compare(path, meta_p, inf_p, n, x, res, Path(tmp)) for n in net_ids]
    res.detail = "; ".join(d for d in details if d)


def _check_zoo_layout(path: Path, res: CheckResult) -> None:
    """The directory rules of the MONAI Model Zoo's ``ci/verify_bundle.py`` plus ``docs/data_license.txt``."""
    for rel in ZOO_NECESSARY_FILES:
        if not (path / rel).is_file():
            res.problems.append(f"{rel}: missing; the MONAI Model Zoo's CI refuses a bundle without it")
    if not (path / DATA_LICENSE).is_file():
        res.problems.append(
            f"{DATA_LICENSE}: missing; state the licence of the training data (and of the demo data) there"
        )
    for rel in ZOO_PREFERRED_FILES:
        if not (path / rel).is_file():
            res.warnings.append(f"{rel}: absent (the zoo prefers it; see the 'weights' check)")
    if not res.problems:
        res.detail = "necessary files present"


def pretty_json(obj: Any) -> str:
    """``obj`` as the zoo's pre-commit ``pretty-format-json --indent=4 --no-sort-keys`` writes it."""
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def _check_json_format(path: Path, res: CheckResult) -> None:
    """Every ``configs/*.json`` is formatted as :func:`pretty_json` (what the zoo's pre-commit would rewrite)."""
    bad = []
    for p in sorted((path / "configs").glob("*.json")):
        try:
            text = p.read_text(encoding="utf-8")
            obj = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # reported by 'files'
        if text != pretty_json(obj):
            bad.append(p.name)
    if bad:
        res.problems.append(
            f"configs/{{{','.join(bad)}}}: not formatted as the zoo's pre-commit hook "
            "(pretty-format-json --indent=4 --no-sort-keys) writes it; rewrite with "
            "tlk_components.zoo.verify.pretty_json(json.load(f))"
        )
    else:
        res.detail = "configs/*.json formatted with 4-space indent, key order kept"


def _check_weights(path: Path, res: CheckResult) -> None:
    """Say which weights the network checks use, and check the files ``large_files.yml`` lists."""
    try:
        from tlk_components.zoo.large_files import check_large_files
    except ImportError:  # pragma: no cover - the module ships with the package
        check_large_files = None
    if check_large_files is not None:
        try:
            res.problems += check_large_files(path)
        except TLKError as e:
            res.problems.append(str(e))
    weights = path / "models" / "model.pt"
    if weights.is_file():
        from tlk_components.utils.io import sha256_file

        res.detail = f"models/model.pt (sha256 {sha256_file(weights)[:12]}…) is what the network checks load"
    else:
        res.warnings.append(
            "no models/model.pt: the network checks use a random initialisation; train the bundle "
            "(docs/README.md) or fetch its large_files before packaging a release"
        )
        res.detail = "untrained (random initialisation checked)"


def _ckpt_files_read(path: Path) -> list[str]:
    """Names of ``.pt`` files that train.json/inference.json read from ``ckpt_dir`` (``@ckpt_dir + '/x.pt'``)."""
    names: set[str] = set()
    for rel in ("configs/train.json", "configs/inference.json"):
        try:
            strings = list(_iter_strings(_load_json(path / rel)))
        except (OSError, json.JSONDecodeError):
            continue
        for text in strings:
            names.update(re.findall(r"@ckpt_dir\s*\+\s*['\"]/([\w.-]+\.pt)['\"]", text))
    return sorted(names - {"checkpoint_last.pt"})


@contextlib.contextmanager
def _workflow_sandbox(path: Path) -> Any:
    """A temporary folder with the bundle's tiny demo dataset and, when the bundle has none, random weights.

    Yields the overrides that point a bundle config at it: ``dataset_dir``, ``output_dir``, ``ckpt_dir``.
    """
    from tlk_components.data.registry import get_data_module

    with tempfile.TemporaryDirectory(prefix="tlk_verify_props_") as tmp:
        root = Path(tmp)
        module = get_data_module(path.name)
        with _quiet():
            module.write_demo(root / "data", size="tiny")
        ckpt = root / "models"
        ckpt.mkdir()
        shipped = path / "models"
        for f in sorted(shipped.glob("*.pt")) if shipped.is_dir() else []:
            (ckpt / f.name).write_bytes(f.read_bytes())
        meta_p, inf_p = path / "configs" / "metadata.json", path / "configs" / "inference.json"
        if inf_p.is_file():
            for net_id in _network_ids(_load_json(inf_p)):
                targets = [_weights_for(ckpt.parent, net_id, "pt")]
                if net_id == "network_def":  # other weights of the same network a config reads (a source model)
                    targets += [ckpt / n for n in _ckpt_files_read(path) if n not in {t.name for t in targets}]
                missing = [t for t in targets if not t.is_file()]
                if missing:
                    with _quiet():
                        net = _parse_network(meta_p, inf_p, path, net_id)
                    for t in missing:
                        atomic_torch_save(net.state_dict(), t)
        yield {"dataset_dir": str(root / "data"), "output_dir": str(root / "out"), "ckpt_dir": str(ckpt)}


def workflow_property_problems(
    bundle: str | os.PathLike, workflow_type: str, config_file: str | os.PathLike, **override: Any
) -> list[str]:
    """Run MONAI's ``ConfigWorkflow(workflow_type=...).initialize()`` then ``check_properties()``.

    This is what MONAI Label, MONAI Deploy and MONAI FL do before driving a bundle: every required property
    (``monai.bundle.properties``: train ``bundle_root, device, dataset_dir, trainer, max_epochs, train_dataset,
    train_inferer``; infer ``bundle_root, device, dataset_dir, dataset, evaluator, network_def, inferer``) is
    instantiated, and every optional property that its consumer references must be referenced by its id
    (``"@train#handlers"``), with every item of ``train#handlers`` a dict.

    Args:
        bundle: bundle folder.
        workflow_type: ``"train"`` or ``"infer"``.
        config_file: the config (or list of configs) the workflow reads.
        override: config overrides (e.g. ``dataset_dir``).

    Returns:
        One line per problem (empty when MONAI accepts the bundle).
    """
    from monai.bundle import ConfigParser, ConfigWorkflow
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    path = Path(bundle)
    rel = Path(config_file).name if not isinstance(config_file, list | tuple) else str(config_file)
    # required ids must be in the bundle's own config, not only in the overrides this check adds
    raw = ConfigParser()
    raw.read_config(config_file if isinstance(config_file, list | tuple) else str(config_file))
    props = TrainProperties if workflow_type.startswith("train") else InferProperties
    absent = [
        p[BundlePropertyConfig.ID].replace("::", "#")
        for p in props.values()
        if p.get(BundleProperty.REQUIRED) and p[BundlePropertyConfig.ID] not in raw
    ]
    if absent:
        return [
            f"configs/{rel}: required id(s) {absent} missing; MONAI's {props is TrainProperties and 'train' or 'infer'} "
            "workflow (MONAI Label, Deploy, FL) reads them (monai/bundle/properties.py)"
        ]
    level = logging.root.manager.disable
    try:
        with _quiet():
            logging.disable(logging.WARNING)  # MONAI warns that logging_file=False skips logging.conf
            wf = ConfigWorkflow(
                config_file=str(config_file) if not isinstance(config_file, list | tuple) else list(config_file),
                meta_file=str(path / "configs" / "metadata.json"),
                logging_file=False,
                workflow_type=workflow_type,
                **{"bundle_root": str(path), **override},
            )
            wf.initialize()
            missing = wf.check_properties()
    except Exception as e:  # noqa: BLE001 - any failure is what MONAI Label/Deploy/FL would hit
        return [
            f"configs/{rel}: ConfigWorkflow(workflow_type={workflow_type!r}) failed: {_short(e)}; the "
            "property ids and reference rules are in monai/bundle/properties.py (see bundles/README.md)"
        ]
    finally:
        logging.disable(level)
    if missing:
        return [
            f"configs/{rel}: check_properties(workflow_type={workflow_type!r}) reports {missing}: required ids "
            "missing, or optional ids not referenced as '@<id>' by their consumer (e.g. train#trainer#train_handlers "
            "must be '@train#handlers')"
        ]
    return []


def _check_properties(path: Path, res: CheckResult) -> None:
    from tlk_components.utils.errors import ConfigError

    with contextlib.ExitStack() as stack:
        try:
            overrides = stack.enter_context(_workflow_sandbox(path))
        except ConfigError as e:
            res.skipped = f"no demo data to build the workflows on ({e})"
            return
        except Exception as e:  # noqa: BLE001
            res.problems.append(f"cannot prepare the tiny demo dataset and weights: {_short(e)}")
            return
        done = []
        for workflow_type, rel in WORKFLOW_CONFIGS:
            cfg = path / rel
            if not cfg.is_file():
                res.problems.append(f"{rel}: missing; ConfigWorkflow(workflow_type={workflow_type!r}) needs it")
                continue
            run_override = {**overrides, "output_dir": f"{overrides['output_dir']}_{workflow_type}"}
            if workflow_type == "train":
                run_override["epochs"] = 1
            res.problems += workflow_property_problems(path, workflow_type, cfg, **run_override)
            done.append(workflow_type)
    if not res.problems:
        res.detail = f"ConfigWorkflow.check_properties() returns [] for {', '.join(done)} (tiny demo data)"


_CHECKS = {
    "metadata": _check_metadata,
    "files": _check_files,
    "config_keys": _check_config_keys,
    "overrides": _check_overrides,
    "portable": _check_portable,
    "readme_metrics": _check_readme,
    "zoo_layout": _check_zoo_layout,
    "json_format": _check_json_format,
    "weights": _check_weights,
    "properties": _check_properties,
}


def is_checkout_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bundle of the checkout this package was installed from (under its ``bundles/`` after
    resolving links; :func:`~tlk_components.zoo.registry.source_bundles`). False when there is no such checkout."""
    own = source_bundles()
    if own is None:
        return False
    try:
        return Path(path).resolve().is_relative_to(own.resolve())
    except OSError:
        return False


def verify_bundle(
    bundle: str | os.PathLike,
    checks: Sequence[str] | None = None,
    device: str = "cpu",
    trust: bool | None = None,
) -> VerifyReport:
    """Run the named checks on one bundle and return the report (never raises for a failed check).

    Args:
        bundle: bundle name (see ``tlk list``) or bundle folder.
        checks: subset of :data:`ALL_CHECKS` (default: all). :data:`STATIC_CHECKS` reads files only.
        device: where the network checks run (default ``"cpu"``).
        trust: run the :data:`CODE_CHECKS`, which execute code from the bundle's configs. Default (None): only
            for this checkout's own bundles (:func:`is_checkout_bundle`); for any other folder they are reported
            as skipped (``report.untrusted``) with how to run them. True: run them (a ``UserWarning`` says that a
            bundle from outside this checkout runs code); False: never.

    Returns:
        :class:`VerifyReport`; ``report.ok`` is False when any check failed, ``report.summary()`` says what to fix.

    Raises:
        ConfigError: unknown bundle name (lists the known ones) or unknown check name.
    """
    from tlk_components.utils.validation import look_up_option

    path = find_bundle(bundle)
    names = list(ALL_CHECKS if checks is None else checks)
    for n in names:
        look_up_option("check", n, ALL_CHECKS)
    report = VerifyReport(bundle=path.name, path=path)
    trusted = is_checkout_bundle(path) if trust is None else bool(trust)
    if trusted and not is_checkout_bundle(path) and any(n in CODE_CHECKS for n in names):
        warnings.warn(
            f"verify builds the configs of {path}: any '_target_' in them is called and any '$' expression is "
            f"evaluated by Python. Only do this for bundles from a source you trust (see {_TRUST_ADVISORY}).",
            UserWarning,
            stacklevel=2,
        )
    for name in ALL_CHECKS:
        if name not in names:
            continue
        res = CheckResult(name)
        t0 = time.perf_counter()
        if name in CODE_CHECKS and not trusted:
            res.skipped = "not run: it executes code from the bundle's configs (see the note below; --trust)"
            report.untrusted.append(name)
        elif name == "net_in_out":
            _check_net_in_out(path, res, device)
        elif name == "torchscript":
            _check_torchscript(path, res, device)
        else:
            _CHECKS[name](path, res)
        res.seconds = time.perf_counter() - t0
        report.checks.append(res)
    return report


def verify_all(
    root: str | os.PathLike | None = None, checks: Sequence[str] | None = None, trust: bool | None = None
) -> list[VerifyReport]:
    """:func:`verify_bundle` for every bundle found by :func:`~tlk_components.zoo.registry.list_bundles`.

    ``trust`` as in :func:`verify_bundle`: by default the code checks run for this checkout's own bundles only.
    """
    return [verify_bundle(p, checks=checks, trust=trust) for p in list_bundles(root).values()]


def verify_cmd(bundle: str | None = None, all: bool = False, static: bool = False, trust: bool = False) -> str:
    """Verify BUNDLE (or every bundle with --all); exits with status 2 and the list of fixes when a check fails.

    For a bundle outside the bundles/ of the checkout this package was installed from (e.g. a downloaded one) only the file checks run unless --trust
    is given: the others execute code from its configs.

    Args:
        bundle: bundle name or folder.
        all: verify every bundle of the bundles folder (``TLK_BUNDLES_DIR``, else the checkout's bundles/).
        static: only the checks that read files (skip building and exporting the networks).
        trust: also run the checks that execute the bundle's config code (net_in_out, torchscript, properties)
            on a bundle from outside this checkout; read its configs first.
    """
    if bool(bundle) == bool(all):
        raise VerifyError("pass exactly one of BUNDLE or --all, e.g. `tlk verify mnist_mlp_classification`")
    checks = STATIC_CHECKS if static else None
    trust_arg = True if trust else None
    reports = (
        verify_all(checks=checks, trust=trust_arg)
        if all
        else [verify_bundle(str(bundle), checks=checks, trust=trust_arg)]
    )
    if not reports:
        raise VerifyError(no_bundles_hint())
    text = "\n".join(r.summary() for r in reports)
    bad = [r.bundle for r in reports if not r.ok]
    if bad:
        raise VerifyError(f"{text}\n{len(bad)} of {len(reports)} bundle(s) failed: {', '.join(bad)}")
    partial = [r.bundle for r in reports if r.untrusted]
    if partial:
        return (
            f"{text}\nall {len(reports)} bundle(s) passed the checks that ran; the checks that execute config code "
            f"were not run for {', '.join(partial)} (pass --trust to run them)"
        )
    return f"{text}\nall {len(reports)} bundle(s) passed"
