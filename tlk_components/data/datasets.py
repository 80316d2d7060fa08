# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Dataset integrity reports and demo writing, shared by every data module.

A demo dataset is written only into an empty folder or into an earlier demo: :func:`write_demo_dataset` leaves
the marker :data:`DEMO_MARKER` (``.tlk_demo.json``: bundle, size, seed and the files written) and refuses any other
non-empty folder, so the user's own data (real MNIST ``.gz`` files, a BraTS copy) is never overwritten. Rewriting
an earlier demo first removes the files that demo wrote (only those), so a smaller demo leaves no stale cases.
:func:`ensure_demo` is the one rule for "write the demo on first use". Which data module serves which bundle is
:mod:`tlk_components.data.registry`'s business.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tlk_components.utils.errors import DatasetError
from tlk_components.utils.io import atomic_write_json

__all__ = [
    "DEMO_MARKER",
    "DatasetReport",
    "DemoWriter",
    "check_demo_target",
    "ensure_demo",
    "read_demo_marker",
    "write_demo_dataset",
]

#: File name of the marker a demo writer leaves in its folder.
DEMO_MARKER = ".tlk_demo.json"

#: A data module's ``write_demo(out_dir, size="demo", seed=0) -> Path``.
DemoWriter = Callable[..., Path]


@dataclass
class DatasetReport:
    """Every problem found in a dataset, by case, plus the number of cases checked.

    Example:
        >>> r = DatasetReport("/data/kits19")
        >>> r.add("case_00001", "segmentation.nii.gz missing; expected next to imaging.nii.gz")
        >>> r.ok
        False
    """

    dataset_dir: str
    problems: list[str] = field(default_factory=list)
    n_cases: int = 0
    fix: str = ""

    def add(self, case: str, message: str) -> None:
        """Record one problem for ``case`` (a case id or a file name)."""
        self.problems.append(f"{case}: {message}")

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        """Raise :class:`DatasetError` listing every problem (not only the first)."""
        if self.problems:
            hint = f"\nFix: {self.fix}" if self.fix else ""
            raise DatasetError(
                f"dataset {self.dataset_dir}: {len(self.problems)} problem(s) in {self.n_cases} case(s){hint}",
                self.problems,
            )

    def summary(self) -> str:
        if self.ok:
            return f"dataset {self.dataset_dir}: OK ({self.n_cases} cases)"
        lines = [f"dataset {self.dataset_dir}: {len(self.problems)} problem(s) in {self.n_cases} case(s)"]
        lines += [f"  - {p}" for p in self.problems]
        if self.fix:
            lines.append(f"Fix: {self.fix}")
        return "\n".join(lines)


def read_demo_marker(folder: str | os.PathLike) -> dict | None:
    """The demo marker of ``folder`` (``{"bundle", "size", "seed", "files"}``), or None when it has none."""
    path = Path(folder) / DEMO_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and "bundle" in marker else None


def check_demo_target(bundle: str, out_dir: str | os.PathLike) -> dict | None:
    """Refuse to write ``bundle``'s demo into ``out_dir`` unless it is missing, empty, or an earlier demo of it.

    Returns:
        The earlier demo's marker (None for a missing or empty folder).

    Raises:
        DatasetError: ``out_dir`` is a file, or a non-empty folder without a demo marker (user data), or the demo
            of another bundle; the message names the folder and the fix.
    """
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise DatasetError(f"{d} is a file; pass a folder (new or empty) to write the demo dataset into")
    if not d.is_dir() or not any(d.iterdir()):
        return None
    marker = read_demo_marker(d)
    if marker is None:
        raise DatasetError(
            f"{d} is not empty and holds no demo marker ({DEMO_MARKER}): it may be your own data, which the demo "
            "would overwrite. Pass a new or empty folder for the demo (or delete this folder's contents yourself)"
        )
    if marker.get("bundle") != bundle:
        raise DatasetError(
            f"{d} holds the demo dataset of {marker.get('bundle')!r}, not of {bundle!r}; pass a new or empty folder"
        )
    return marker


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def write_demo_dataset(
    bundle: str, writer: DemoWriter, out_dir: str | os.PathLike, size: str = "demo", seed: int = 0
) -> Path:
    """Write ``bundle``'s demo dataset into ``out_dir`` with ``writer`` and leave the :data:`DEMO_MARKER` there.

    Only a missing or empty folder, or an earlier demo of the same bundle (its marker present), is written to; an
    earlier demo's files (as listed in its marker) are removed first, files the user added are kept.

    Args:
        bundle: the bundle name recorded in the marker.
        writer: the data module's ``write_demo(out_dir, size=..., seed=...)``.
        out_dir: output folder (created).
        size: ``"demo"`` or ``"tiny"``.
        seed: generator seed.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DatasetError: ``out_dir`` is a file, user data, or another bundle's demo (see :func:`check_demo_target`).
    """
    d = Path(out_dir)
    marker = check_demo_target(bundle, d)
    if marker is not None:
        root = d.resolve()
        for rel in marker.get("files", []):
            path = (d / rel).resolve()
            if path.is_relative_to(root) and path.is_file():
                path.unlink()
        (d / DEMO_MARKER).unlink()
    before = _files_under(d) if d.is_dir() else set()
    writer(d, size=size, seed=int(seed))
    files = sorted(_files_under(d) - before)
    atomic_write_json(d / DEMO_MARKER, {"bundle": bundle, "size": size, "seed": int(seed), "files": files})
    return d


def ensure_demo(
    bundle: str,
    writer: DemoWriter,
    dataset_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None,
    size: str = "demo",
) -> bool:
    """Write the demo on first use: when ``dataset_dir`` is the bundle's demo folder and holds nothing yet.

    A folder that is not the demo folder, or is not empty, is never written to.

    Returns:
        True when the demo was written now.

    Raises:
        DatasetError: see :func:`write_demo_dataset`.
    """
    d = Path(dataset_dir)
    if demo_dir is None or d.resolve() != Path(demo_dir).resolve() or (d.is_dir() and any(d.iterdir())):
        return False
    write_demo_dataset(bundle, writer, d, size=size)
    return True
