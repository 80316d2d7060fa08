# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Offline metadata validation against the schema shipped in this package.

MONAI's ``verify_metadata`` downloads the schema named in ``metadata["schema"]``; we validate against
``meta_schema.json`` (the 2024-07-25 schema's requirements plus the zoo's own: semver ``version`` that is a key
of ``changelog``, non-empty ``eval_metrics``) so checks work offline.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["SCHEMA_PATH", "load_schema", "metadata_errors", "parse_version"]

SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")


@cache
def load_schema() -> dict[str, Any]:
    """The shipped JSON schema (draft 2019-09)."""
    return json.loads(SCHEMA_PATH.read_text())


def parse_version(version: str) -> tuple[int, ...]:
    """``"0.5.10"`` -> ``(0, 5, 10)``: real version ordering, not string ordering.

    Raises:
        ValueError: not a dotted version of integers.
    """
    try:
        return tuple(int(p) for p in str(version).split("."))
    except ValueError:
        raise ValueError(f"version {version!r}: expected dotted integers such as '1.2.3'") from None


def metadata_errors(meta: dict[str, Any] | str | os.PathLike) -> list[str]:
    """Every schema violation in a bundle's metadata (empty list when valid).

    Args:
        meta: the parsed metadata, or the path of ``metadata.json``.

    Returns:
        One line per problem: ``"<json path>: <message>"``.
    """
    name = "metadata"
    if not isinstance(meta, dict):
        name = str(meta)
        try:
            meta = json.loads(Path(meta).read_text())
        except FileNotFoundError:
            return [f"{name}: file not found"]
        except json.JSONDecodeError as e:
            return [f"{name}: not valid JSON ({e})"]
    validator = jsonschema.Draft201909Validator(load_schema())
    errors = [
        f"{name}: {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(meta), key=lambda e: list(map(str, e.absolute_path)))
    ]
    version, changelog = meta.get("version"), meta.get("changelog")
    if isinstance(changelog, dict) and isinstance(version, str) and version not in changelog:
        errors.append(f'{name}: version {version} has no changelog entry; add "{version}": "<what changed>"')
    if isinstance(changelog, dict) and isinstance(version, str) and changelog:
        try:
            newest = max(changelog, key=parse_version)
            if parse_version(newest) > parse_version(version):
                errors.append(f"{name}: changelog names {newest}, newer than version {version}")
        except ValueError:
            pass  # reported by the schema
    return errors
