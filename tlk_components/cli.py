# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The zoo's command line: ``python -m tlk_components COMMAND ...`` (also installed as ``tlk``).

Each command is a thin python-fire wrapper over a typed function that can be called from Python too. Only the
module of the command that runs is imported (``verify`` does not pay for torch transforms it never uses).
Errors of the zoo's own kind (:class:`~tlk_components.utils.errors.TLKError`) are printed as one clear
message and exit with status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import fire

from tlk_components.data.datasets import DatasetReport
from tlk_components.utils.errors import TLKError

__all__ = ["COMMANDS", "command", "list_cmd", "main", "prepare_demo", "verify_dataset"]


def list_cmd(index: str | None = None, timeout: float = 30.0) -> str:
    """List the local bundles (name, version, trained or not, MONAI/torch versions, task), or an index's with --index.

    Args:
        index: URL (http(s)://, file://) or path of a zoo index (model_info.json); default: the local bundles.
        timeout: seconds to wait for a server (default 30).
    """
    from tlk_components.zoo.api import format_bundles_info, list_bundles_info

    rows = list_bundles_info(index, timeout=float(timeout))
    if index is not None and not rows:
        return f"index {index} lists no bundles"
    return format_bundles_info(rows)


def prepare_demo(bundle: str, dir: str, size: str = "demo", seed: int = 0) -> str:
    """Write BUNDLE's demo dataset into DIR, in the real public layout the bundle reads.

    DIR must be new, empty, or an earlier demo of BUNDLE (it holds the ``.tlk_demo.json`` marker this command
    leaves); any other non-empty folder is refused, so your own data is never overwritten.

    Args:
        bundle: a bundle name (see ``list``).
        dir: output folder (created).
        size: ``demo`` (the bundle's default) or ``tiny`` (what the tests use).
        seed: generator seed; the same seed writes the same files.
    """
    from tlk_components.data.registry import get_data_module, write_demo_dataset

    if size not in ("demo", "tiny"):
        raise TLKError(f"size={size!r}: expected 'demo' or 'tiny'")
    get_data_module(bundle)  # unknown bundle: a clear error before touching DIR
    out = write_demo_dataset(bundle, Path(dir), size=size, seed=int(seed))
    return f"wrote the {size} dataset of {bundle} to {out}"


def verify_dataset(bundle: str, dir: str) -> DatasetReport:
    """Check a dataset in BUNDLE's expected layout before any compute; list every bad case by name.

    Exits non-zero when anything is wrong.
    """
    from tlk_components.data.registry import get_data_module

    report = get_data_module(bundle).verify_dataset(Path(dir))
    print(report.summary())
    if not report.ok:
        sys.exit(1)
    return report


#: command name -> ``module:function`` of its typed function (python-fire turns ``kidney_demo`` into
#: ``kidney-demo`` too); tests/test_cli.py checks that every entry resolves.
COMMANDS: dict[str, str] = {
    "list": "tlk_components.cli:list_cmd",
    "prepare_demo": "tlk_components.cli:prepare_demo",
    "verify_dataset": "tlk_components.cli:verify_dataset",
    "verify": "tlk_components.zoo.verify:verify_cmd",
    "package": "tlk_components.zoo.package:package_cmd",
    "download": "tlk_components.zoo.download:download_cmd",
    "download_large_files": "tlk_components.zoo.large_files:fetch_large_files_cmd",
    "kidney_demo": "tlk_components.workflows.kidney_demo:run_demo",
    "convert_kits19": "tlk_components.data.convert:convert_kits19",
    "convert_amos22": "tlk_components.data.convert:convert_amos22",
    "plan": "tlk_components.data.plan:plan",
    "evaluate_kidney": "tlk_components.engines.evaluators.kidney:evaluate_kidney",
}


def command(name: str) -> Callable:
    """The typed function of command ``name`` (``-`` or ``_``), imported on demand.

    Raises:
        TLKError: an unknown command, listing the known ones.
    """
    key = name.replace("-", "_")
    if key not in COMMANDS:
        raise TLKError(f"unknown command {name!r}; the commands are: {', '.join(sorted(COMMANDS))}")
    module, function = COMMANDS[key].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tlk_components`` and ``tlk``."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0].replace("-", "_") if args else ""
    try:
        # only the command that runs is imported; without one (or with --help) every command is listed
        table = {name: command(name)} if name in COMMANDS else {key: command(key) for key in COMMANDS}
        fire.Fire(table, command=args, name="tlk", serialize=_serialize)
    except TLKError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _serialize(value: object) -> object:
    if isinstance(value, DatasetReport):
        return None  # already printed
    return value


if __name__ == "__main__":
    main()
