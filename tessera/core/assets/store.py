"""Where assets live and how they are checked and installed: the tessera home, each asset's directory and its
manifest (``tessera-asset.json``: the source, the builder's format and the sha256 and size of every file).

An asset directory only appears once it is complete: it is built in a hidden sibling directory and renamed into
place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from tessera.core.assets.catalogue import chosen, known
from tessera.core.errors import AssetError

MANIFEST = "tessera-asset.json"


def tessera_home() -> Path:
    """The cache root: ``$TESSERA_HOME`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/tessera``."""
    if os.environ.get("TESSERA_HOME"):
        return Path(os.environ["TESSERA_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tessera"


def asset_dir(name: str) -> Path:
    """The directory where asset ``name`` lives once fetched (it may not exist)."""
    return tessera_home() / "assets" / known(name).name


def asset_path(name: str) -> Path:
    """The directory of asset ``name``, after a quick check that it is complete.

    The check reads the manifest and compares every recorded file's size; ``verify`` also compares hashes.
    Raises ``AssetError`` (one line, saying which command fixes it) when the asset is missing or damaged.
    """
    reason = problem(name, deep=False)
    if reason:
        raise AssetError(f"asset {name!r} is {reason}: run `tessera assets fetch {name}`")
    return asset_dir(name)


def verify(names: Iterable[str] | None = None, deep: bool = True) -> dict[str, str]:
    """Check assets (default: all); map each name to ``"ok"`` or the reason it is not usable.

    ``deep`` recomputes every file's sha256; otherwise only presence and sizes are checked.
    """
    return {name: problem(name, deep) or "ok" for name in chosen(names)}


def read_manifest(name: str) -> dict:
    """The manifest of asset ``name`` as written by :func:`install` (raises when it is missing or unreadable)."""
    return json.loads((asset_dir(name) / MANIFEST).read_text(encoding="utf-8"))


def problem(name: str, deep: bool) -> str | None:
    """Why asset ``name`` is unusable ("not fetched", "corrupt (...)", "stale (...)"), or None if it is fine."""
    asset, directory = known(name), asset_dir(name)
    if not (directory / MANIFEST).is_file():
        return "not fetched"
    try:
        manifest = read_manifest(name)
        files = manifest["files"]
        if manifest["name"] != name:
            return f"corrupt (its manifest names asset {manifest['name']!r})"
        if manifest["format"] != asset.format or manifest["source"] != str(asset.source):
            return f"stale (built from {manifest['source']} by another version of tessera)"
        for rel, entry in files.items():
            path = directory / rel
            if not path.is_file():
                return f"corrupt ({rel} is missing)"
            if path.stat().st_size != entry["size"]:
                return f"corrupt ({rel} has {path.stat().st_size} bytes, expected {entry['size']})"
            if deep and sha256(path) != entry["sha256"]:
                return f"corrupt ({rel} does not match its sha256)"
        if deep and manifest["digest"] != digest(files):
            return "corrupt (the manifest's digest does not match its file list)"
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"corrupt (unreadable manifest: {error!r})"
    return None


def sha256(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def digest(files: dict[str, dict]) -> str:
    """One sha256 over a manifest's file list (paths, hashes and sizes, sorted by path)."""
    listing = "".join(f"{rel}\0{entry['sha256']}\0{entry['size']}\n" for rel, entry in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def megabytes(size: int) -> str:
    """``size`` bytes as ``"12.3 MB"``."""
    return f"{size / 1e6:.1f} MB"


def install(name: str, build: Callable[[Path], None]) -> int:
    """Build asset ``name`` in a hidden sibling directory, write its manifest, move it into place; return its size."""
    final = asset_dir(name)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-build-"))
    work.chmod(0o755)
    try:
        build(work)
        files = {
            path.relative_to(work).as_posix(): {"sha256": sha256(path), "size": path.stat().st_size}
            for path in sorted(work.rglob("*"))
            if path.is_file()
        }
        asset = known(name)
        manifest = {
            "name": name,
            "source": str(asset.source),
            "format": asset.format,
            "digest": digest(files),
            "files": files,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        old = final.parent / f".{name}-old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sum(entry["size"] for entry in files.values())
