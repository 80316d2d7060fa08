# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Offline metadata validation against the schema shipped in this package.

MONAI's ``verify_metadata`` downloads the schema named in ``metadata["schema"]``; we validate against
``meta_schema.json`` (the 2024-07-25 schema's requirements plus the zoo's own: semver ``version`` that is a key
of ``changelog``, non-empty ``eval_metrics``) so checks work offline.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["SCHEMA_PATH", "is_prerelease", "load_schema", "metadata_errors", "parse_version"]

SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")


@cache
def load_schema() -> dict[str, Any]:
    """The shipped JSON schema (draft 2019-09)."""
    return json.loads(SCHEMA_PATH.read_text())


#: ``1.2.3``, ``v1.2.3``, semver pre-releases (``1.2.3-rc.1``, ``1.2.3-alpha``), PEP 440 ones (``1.2.3rc1``,
#: ``1.2.3.dev0``, ``1.2.3.post1``), and a local/build tag after ``+`` (``2.13.0+cpu``), ignored for ordering.
_VERSION = re.compile(
    r"""^\s*v?(?P<release>\d+(?:\.\d+)*)
    (?:
        -(?P<semver>[0-9A-Za-z]+(?:[.-][0-9A-Za-z]+)*)
      | (?P<pep>(?:[._-]?(?:alpha|a|beta|b|rc|c|preview|pre|dev|post)[._-]?\d*)+)
    )?
    (?:\+(?P<local>[0-9A-Za-z]+(?:[._-][0-9A-Za-z]+)*))?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)
_TOKEN = re.compile(r"\d+|[a-z]+")
_ALIASES = {"alpha": "a", "beta": "b", "c": "rc", "pre": "rc", "preview": "rc"}
_PHASE_DEV, _PHASE_PRE, _PHASE_FINAL, _PHASE_POST = 0, 1, 2, 3


def parse_version(version: str) -> tuple[Any, ...]:
    """Sort key of a version: semantic-versioning order, with PEP 440 spellings understood.

    * release numbers compare numerically: ``0.5.10 > 0.5.9``; trailing zeros do not count (``1.0 == 1.0.0``);
    * a pre-release comes before its release: ``1.0.0-rc1 < 1.0.0-rc2 < 1.0.0`` (also ``1.0.0rc1``,
      ``1.0.0-alpha < 1.0.0-beta < 1.0.0-rc.1``; ``1.0.0.dev0`` before all of them);
    * numbers inside a tag compare numerically (``rc2 < rc10``), and ``alpha``/``beta``/``c``/``pre`` are the
      same as ``a``/``b``/``rc``/``rc``; a post-release (``1.0.0.post1``) comes after its release;
    * a build/local tag after ``+`` (``2.13.0+cpu``) is ignored.

    Args:
        version: the version text.

    Returns:
        A tuple to compare or sort with (``max(versions, key=parse_version)``); not meant to be inspected.

    Raises:
        ValueError: not a version (dotted integers such as ``1.2.3``, optionally with a tag).

    Example:
        >>> sorted(["1.0.0", "1.0.0-rc2", "0.5.10", "1.0.0rc1", "0.5.9"], key=parse_version)
        ['0.5.9', '0.5.10', '1.0.0rc1', '1.0.0-rc2', '1.0.0']
    """
    m = _VERSION.match(str(version))
    if m is None:
        raise ValueError(
            f"version {version!r}: expected dotted integers such as '1.2.3', optionally with a pre-release tag "
            "('1.2.3-rc.1', '1.2.3rc1') or a local tag ('+cpu')"
        )
    release = [int(p) for p in m.group("release").split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    tag = (m.group("semver") or m.group("pep") or "").lower()
    tokens = [_ALIASES.get(t, t) for t in _TOKEN.findall(tag)]
    if not tokens:
        phase = _PHASE_FINAL
    elif tokens[0] == "dev":
        phase = _PHASE_DEV
    elif tokens[0] == "post":
        phase = _PHASE_POST
    else:
        phase = _PHASE_PRE
    # semver: numeric identifiers sort before alphanumeric ones; one representation keeps tuples comparable
    key = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in tokens)
    return (tuple(release), phase, key)


def is_prerelease(version: str) -> bool:
    """True for a pre-release or development version (``1.0.0-rc1``, ``1.0.0rc1``, ``1.0.0.dev0``).

    Raises:
        ValueError: not a version (see :func:`parse_version`).
    """
    return parse_version(version)[1] < _PHASE_FINAL


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
