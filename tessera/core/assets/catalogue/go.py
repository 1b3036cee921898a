"""``go``: the Gene Ontology as Bioconductor's ``GO.sqlite`` (43,559 terms, 85,716 parent edges, GO release 2022-07, CC
BY 4.0) from Debian's ``r-bioc-go.db`` package, taken with ``apt-get download`` and ``dpkg-deb -x`` (never installed:
it would pull R). Needs a Debian-based machine with ``apt-get``."""

from __future__ import annotations

from pathlib import Path

from tessera.core.assets.archives import deb_extract
from tessera.core.assets.asset import Asset, Source
from tessera.core.errors import AssetError


def build(deb: Path, out: Path) -> None:
    """Copy ``GO.sqlite`` out of the Debian package and check its term and parent-edge counts."""
    import sqlite3

    (path,) = deb_extract(deb, r"usr/lib/R/site-library/GO\.db/extdata/GO\.sqlite", "GO.sqlite", out, expected=1)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        terms = connection.execute("SELECT count(*) FROM go_term").fetchone()[0]
        edges = sum(
            connection.execute(f"SELECT count(*) FROM go_{part}_parents").fetchone()[0] for part in ("bp", "cc", "mf")
        )
    finally:
        connection.close()
    if terms < 40000 or edges < 80000:
        raise AssetError(
            f"{deb.name}: GO.sqlite has {terms} terms and {edges} parent edges, expected about 43,559 / 85,716"
        )


ASSET = Asset(
    name="go",
    format=1,
    source=Source("r-bioc-go.db", "", debian=True),
    build=build,
    summary="the Gene Ontology (GO.sqlite) from Debian's r-bioc-go.db; needs apt-get",
)
