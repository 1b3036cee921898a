"""Tests of tessera.core.assets (the catalogue, the checks, fetch and the command line).

The offline tests use a temporary ``TESSERA_HOME`` and a small fake pykeen wheel in place of ``pip download``.
The tests marked "real" read the assets fetched into the default home (``tessera assets fetch``) and are
skipped where they are absent.
"""

import csv
import json
import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from tessera.core.assets import (
    ASSET_NAMES,
    asset_dir,
    asset_path,
    fetch,
    fetching,
    main,
    store,
    tessera_home,
    verify,
)
from tessera.core.assets.catalogue import pykeen as pykeen_asset
from tessera.core.assets.catalogue import wordnet as wordnet_asset
from tessera.core.cli import main as tessera_main
from tessera.core.errors import AssetError

REAL_HOME = tessera_home()  # read before any test points TESSERA_HOME elsewhere


def real_asset(name: str) -> Path:
    """The fetched asset ``name`` in the default home, or skip the test."""
    path = REAL_HOME / "assets" / name
    if not (path / store.MANIFEST).is_file():
        pytest.skip(f"asset {name!r} is not fetched: run `tessera assets fetch {name}`")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TESSERA_HOME."""
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


FAKE_TRIPLES = {"nations": 3, "umls": 2, "kinships": 1}


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """Make ``pip download`` return a tiny pykeen wheel; return the list of downloads it was asked for."""
    wheel = tmp_path / "pykeen-1.11.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pykeen/__init__.py", "")
        for dataset, n in FAKE_TRIPLES.items():
            for split in ("train", "valid", "test"):
                z.writestr(f"pykeen/datasets/{dataset}/{split}.txt", "".join(f"e{i}\tr\te{i + 1}\n" for i in range(n)))
    calls = []

    def download(source, into):
        calls.append(str(source))
        return wheel

    monkeypatch.setattr(fetching, "download", download)
    return calls


@pytest.fixture
def pykeen_copy(home):
    """A valid pykeen asset in the temporary home: a copy of the real one if fetched, else a fake one."""
    real = REAL_HOME / "assets" / "pykeen"
    if (real / store.MANIFEST).is_file():
        shutil.copytree(real, asset_dir("pykeen"))
    else:
        wheel = home.parent / "fake.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            for dataset in FAKE_TRIPLES:
                for split in ("train", "valid", "test"):
                    z.writestr(f"pykeen/datasets/{dataset}/{split}.txt", "h\tr\tt\n" * 5)
        (home / "assets").mkdir(parents=True)
        store.install("pykeen", lambda out: pykeen_asset.build(wheel, out))
    assert verify(["pykeen"]) == {"pykeen": "ok"}
    return asset_dir("pykeen")


def test_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "t"))
    assert tessera_home() == tmp_path / "t"
    assert asset_dir("wordnet") == tmp_path / "t" / "assets" / "wordnet"
    monkeypatch.delenv("TESSERA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tessera_home() == tmp_path / "xdg" / "tessera"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tessera_home() == Path.home() / ".cache" / "tessera"


def test_unknown_name_lists_valid_names(home):
    assert ASSET_NAMES == ("minilm", "smollm2", "movie_reviews", "bbc_news", "wordnet", "pykeen", "commonsense", "go")
    for function in (asset_dir, asset_path, lambda name: verify([name]), lambda name: fetch([name])):
        with pytest.raises(
            AssetError, match="unknown asset 'bert': valid names are minilm, smollm2, movie_reviews, bbc_news"
        ):
            function("bert")
    with pytest.raises(SystemExit, match="2"):
        tessera_main(["assets", "path", "bert"])


def test_catalogue_has_one_module_per_asset(capsys):
    import pkgutil

    from tessera.core.assets import catalogue

    modules = sorted(module.name for module in pkgutil.iter_modules(catalogue.__path__))
    assert modules == sorted(ASSET_NAMES) == sorted(catalogue.CATALOGUE)
    assert all(asset.name == name for name, asset in catalogue.CATALOGUE.items())
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    helped = capsys.readouterr().out
    assert all(f"{asset.name:14} {asset.summary}" in helped for asset in catalogue.CATALOGUE.values())


def test_missing_asset_gives_one_line_error(home, capsys):
    with pytest.raises(AssetError) as caught:
        asset_path("minilm")
    assert str(caught.value) == "asset 'minilm' is not fetched: run `tessera assets fetch minilm`"
    assert verify() == {name: "not fetched" for name in ASSET_NAMES}
    with pytest.raises(SystemExit, match="2"):
        tessera_main(["assets", "path", "minilm"])
    error = capsys.readouterr().err
    assert error == "error: asset 'minilm' is not fetched: run `tessera assets fetch minilm`\n"
    assert main(["verify", "wordnet"]) == 1
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert listing.count("not fetched") == 1 + len(ASSET_NAMES) and str(asset_dir("smollm2")) in listing


def test_truncated_file_is_detected(pykeen_copy):
    target = pykeen_copy / "nations" / "train.txt"
    size = target.stat().st_size
    target.write_bytes(target.read_bytes()[: size // 2])
    reason = f"corrupt (nations/train.txt has {size // 2} bytes, expected {size})"
    with pytest.raises(AssetError) as caught:
        asset_path("pykeen")
    assert str(caught.value) == f"asset 'pykeen' is {reason}: run `tessera assets fetch pykeen`"
    assert verify(["pykeen"]) == verify(["pykeen"], deep=False) == {"pykeen": reason}


def test_same_size_change_needs_deep_verify(pykeen_copy):
    target = pykeen_copy / "umls" / "test.txt"
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    assert asset_path("pykeen") == pykeen_copy  # the quick check only compares sizes
    assert verify(["pykeen"], deep=False) == {"pykeen": "ok"}
    assert verify(["pykeen"]) == {"pykeen": "corrupt (umls/test.txt does not match its sha256)"}


def test_missing_file_and_bad_manifest_are_detected(pykeen_copy):
    (pykeen_copy / "kinships" / "valid.txt").unlink()
    assert verify(["pykeen"]) == {"pykeen": "corrupt (kinships/valid.txt is missing)"}
    (pykeen_copy / store.MANIFEST).write_text("{not json")
    assert verify(["pykeen"])["pykeen"].startswith("corrupt (unreadable manifest")
    manifest = {"name": "wordnet", "source": "pykeen==1.11.1", "format": 1, "digest": "", "files": {}}
    (pykeen_copy / store.MANIFEST).write_text(json.dumps(manifest))
    assert verify(["pykeen"]) == {"pykeen": "corrupt (its manifest names asset 'wordnet')"}


def test_fetch_builds_skips_and_repairs(home, fake_wheel):
    logged = []
    (path,) = fetch(["pykeen"], log=logged.append)
    assert path == asset_dir("pykeen") and fake_wheel == ["pykeen==1.11.1"]
    assert verify(["pykeen"]) == {"pykeen": "ok"}
    assert (path / "nations" / "valid.txt").read_text().count("\n") == FAKE_TRIPLES["nations"]
    manifest = json.loads((path / store.MANIFEST).read_text())
    assert manifest["name"] == "pykeen" and manifest["source"] == "pykeen==1.11.1" and len(manifest["files"]) == 9
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["digest"])

    fetch(["pykeen"], log=logged.append)  # already present: no download
    assert fake_wheel == ["pykeen==1.11.1"] and logged[-1].startswith("pykeen: already present")

    (path / "umls" / "train.txt").write_text("")
    fetch(["pykeen"], log=logged.append)  # damaged: rebuilt without --force
    assert verify(["pykeen"]) == {"pykeen": "ok"} and len(fake_wheel) == 2

    assert main(["fetch", "pykeen", "--force"]) == 0
    assert len(fake_wheel) == 3
    assert sorted(p.name for p in (home / "assets").iterdir()) == ["pykeen"]  # no build or download leftovers


def test_failed_build_leaves_nothing(home, tmp_path, monkeypatch):
    broken = tmp_path / "pykeen-1.11.1-py3-none-any.whl"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("pykeen/datasets/nations/train.txt", "a\tb\tc\n")
    monkeypatch.setattr(fetching, "download", lambda source, into: broken)
    with pytest.raises(AssetError, match="found 1 files matching"):
        fetch(["pykeen"], log=lambda line: None)
    assert list((home / "assets").iterdir()) == []


# --- the real assets ---------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_real_movie_reviews():
    path = real_asset("movie_reviews")
    sentences = read_csv(path / "sentence_polarity.csv")
    reviews = read_csv(path / "full_reviews.csv")
    assert list(sentences[0]) == ["text", "label"]
    assert len(sentences) == 4000 and Counter(row["label"] for row in sentences) == {"positive": 2000, "negative": 2000}
    assert len(reviews) == 1500 and Counter(row["label"] for row in reviews) == {"positive": 750, "negative": 750}
    assert all(row["text"] and row["text"] == row["text"].strip() for row in sentences + reviews)
    assert sentences[0]["text"].startswith('the rock is destined to be the 21st century\'s new " conan "')


def test_real_pykeen():
    path = real_asset("pykeen")
    expected = {"nations": (1592, 199, 201), "umls": (5216, 652, 661), "kinships": (8544, 1068, 1074)}
    for dataset, counts in expected.items():
        lines = [(path / dataset / f"{split}.txt").read_text().splitlines() for split in ("train", "valid", "test")]
        assert tuple(map(len, lines)) == counts
        assert all(len(line.split("\t")) == 3 for line in lines[0])


def test_real_wordnet():
    path = real_asset("wordnet")
    synsets = {"noun": 82115, "verb": 13767, "adj": 18156, "adv": 3621}
    for pos, count in synsets.items():
        data = (path / f"data.{pos}").read_bytes()
        lines = list(re.finditer(rb"^(\d{8}) ", data, re.MULTILINE))
        assert len(lines) == count and all(int(line[1]) == line.start() for line in lines)
        assert (path / f"{pos}.exc").is_file() and (path / f"index.{pos}").is_file()
    assert not (path / "data.noun1").exists() and (path / "lexnames").is_file()


def test_real_minilm_and_smollm2_are_plain_hf_dirs():
    minilm = real_asset("minilm")
    assert json.loads((minilm / "config.json").read_text())["hidden_size"] == 384
    assert {"model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in minilm.iterdir()}
    smollm2 = real_asset("smollm2")
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32" and config["num_hidden_layers"] == 30
    assert "<|im_start|>" in (smollm2 / "chat_template.jinja").read_text()


@pytest.mark.parametrize("name", ASSET_NAMES)
def test_real_asset_verifies(name, monkeypatch):
    real_asset(name)
    monkeypatch.setenv("TESSERA_HOME", str(REAL_HOME))
    assert asset_path(name) == REAL_HOME / "assets" / name
    assert verify([name], deep=name in ("movie_reviews", "wordnet", "pykeen")) == {name: "ok"}


def test_debian_asset_without_apt_says_so(home, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        AssetError,
        match="Debian package r-bioc-go.db needs apt-get and dpkg-deb, which this machine "
        "lacks: fetch this asset on a Debian or Ubuntu machine",
    ):
        fetch(["go"], log=lambda line: None)
    assert list((home / "assets").iterdir()) == []


def test_wordnet_exceptions_stay_empty_without_apt(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "wordnet"
    out.mkdir()
    note = wordnet_asset.wordnet_exceptions(out)
    assert note.startswith("*.exc: EMPTY (Debian package wordnet-base needs apt-get")
    assert "irregular forms (running -> run) are not lemmatized" in note
    assert sorted(p.name for p in out.iterdir()) == ["adj.exc", "adv.exc", "noun.exc", "verb.exc"]
    assert all(p.stat().st_size == 0 for p in out.iterdir())
    assert "wordnet: warning: *.exc: EMPTY" in capsys.readouterr().err


def test_real_wordnet_exceptions_and_counts():
    path = real_asset("wordnet")
    note = (path / "EXCEPTIONS.txt").read_text()
    if "EMPTY" in note:
        pytest.skip("the wordnet asset was built without apt: its exception lists are empty")
    assert "running run" in (path / "verb.exc").read_text() and "geese goose" in (path / "noun.exc").read_text()
    assert (path / "cntlist.rev").stat().st_size > 100_000


def test_real_commonsense_and_go():
    rows = read_csv_rows(real_asset("commonsense") / "commonsense.csv")
    assert len(rows) == 9215 and rows[0][:3] == ["funny", "is-property-of", "Einstein"]
    import sqlite3

    connection = sqlite3.connect(real_asset("go") / "GO.sqlite")
    assert connection.execute("SELECT count(*) FROM go_term").fetchone()[0] == 43559
    connection.close()


def read_csv_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


def test_real_bbc_news_articles_and_sentences():
    import collections

    path = real_asset("bbc_news")
    articles = read_csv_rows(path / "bbc_news.csv")
    assert articles[0] == ["title", "text", "label"] and len(articles) == 1 + 2225
    topics = collections.Counter(row[2] for row in articles[1:])
    assert topics == {"sports": 511, "business": 510, "politics": 417, "tech": 401, "entertainment": 386}
    sentences = read_csv_rows(path / "bbc_news_sentences.csv")[1:]
    assert len(sentences) > 30000 and all(5 <= len(text.split()) <= 60 for text, _ in sentences)
    assert "Quarterly profits at US media giant TimeWarner jumped 76%" in sentences[0][0] and "£600m" in sentences[0][0]
