"""``fetch``: download the source packages of assets and build them (each source downloaded once per call)."""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tessera.core.assets.archives import download
from tessera.core.assets.asset import Source
from tessera.core.assets.catalogue import CATALOGUE, chosen
from tessera.core.assets.store import asset_dir, install, megabytes, problem, tessera_home


def fetch(names: Iterable[str] | None = None, force: bool = False, log: Callable[[str], object] = print) -> list[Path]:
    """Download and build assets (default: all) and return their directories.

    Assets that are already present and pass the quick check are kept unless ``force`` is true; missing,
    damaged or stale ones are rebuilt. Each source package is downloaded at most once per call.
    """
    names = chosen(names)
    todo = []
    for name in names:
        if not force and problem(name, deep=False) is None:
            log(f"{name}: already present at {asset_dir(name)}")
        else:
            todo.append(name)
    if not todo:
        return [asset_dir(name) for name in names]
    assets_root = tessera_home() / "assets"
    assets_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=assets_root, prefix=".download-") as downloads:
        archives: dict[Source, Path] = {}
        for name in todo:
            asset = CATALOGUE[name]
            start = time.perf_counter()
            if asset.source not in archives:
                log(f"{name}: downloading {asset.source}")
                archives[asset.source] = download(asset.source, Path(downloads))
            log(f"{name}: building")
            size = install(name, functools.partial(asset.build, archives[asset.source]))
            log(f"{name}: ready, {megabytes(size)} in {time.perf_counter() - start:.1f} s at {asset_dir(name)}")
    return [asset_dir(name) for name in names]
