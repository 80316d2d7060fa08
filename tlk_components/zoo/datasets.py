# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Dataset integrity reports and the ``prepare_dataset`` step every bundle runs in ``initialize``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tlk_components.utils.errors import DatasetError

__all__ = ["DatasetReport", "prepare_dataset"]


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


def prepare_dataset(
    bundle: str, dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike | None = None, size: str = "demo"
) -> str:
    """Make sure ``dataset_dir`` holds a valid dataset for ``bundle``; returns it as a string.

    When ``dataset_dir`` is the bundle's demo folder (``demo_dir``) and holds nothing yet, the demo dataset is
    written there first (deterministic, offline). Then the dataset is verified and every bad case reported.

    Raises:
        DatasetError: the folder is missing (and is not the demo folder) or fails verification.
    """
    from tlk_components.zoo.registry import get_data_module

    mod = get_data_module(bundle)
    d = Path(dataset_dir)
    is_demo = demo_dir is not None and d.resolve() == Path(demo_dir).resolve()
    if is_demo and not (d.is_dir() and any(d.iterdir())):
        mod.write_demo(d, size=size)
    if not d.is_dir():
        raise DatasetError(
            f"dataset_dir {d} does not exist; point --dataset_dir at the dataset in its public layout, or run "
            f"`python -m tlk_components prepare-demo {bundle} {d}` to write the demo dataset there"
        )
    mod.verify_dataset(d).raise_if_bad()
    return str(d)
