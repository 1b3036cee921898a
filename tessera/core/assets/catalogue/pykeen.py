"""``pykeen``: the Nations, UMLS and Kinships benchmarks as ``<dataset>/{train,valid,test}.txt`` (tab-separated head,
relation, tail) from the ``pykeen`` wheel."""

from __future__ import annotations

from pathlib import Path

from tessera.core.assets.archives import extract
from tessera.core.assets.asset import Asset, Source


def build(archive: Path, out: Path) -> None:
    """Build the ``pykeen`` asset from ``archive`` into ``out``."""
    extract(archive, r"pykeen/datasets/(nations|umls|kinships)/(train|valid|test)\.txt", r"\1/\2.txt", out, expected=9)


ASSET = Asset(
    name="pykeen",
    format=1,
    source=Source("pykeen", "1.11.1"),
    build=build,
    summary="the Nations, UMLS and Kinships knowledge-graph benchmarks",
)
