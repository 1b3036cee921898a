"""The catalogue of offline assets: one module per asset, each defining one :class:`~tessera.core.assets.asset.Asset`
(``ASSET``), listed here in the order ``fetch`` builds them."""

from __future__ import annotations

from collections.abc import Iterable

from tessera.core.assets.asset import Asset
from tessera.core.assets.catalogue import (
    bbc_news,
    commonsense,
    go,
    minilm,
    movie_reviews,
    pykeen,
    smollm2,
    wordnet,
)
from tessera.core.errors import AssetError

#: Every asset by name, in the order ``fetch`` builds them.
CATALOGUE: dict[str, Asset] = {
    module.ASSET.name: module.ASSET
    for module in (minilm, smollm2, movie_reviews, bbc_news, wordnet, pykeen, commonsense, go)
}
#: The names of all assets, in the order ``fetch`` builds them.
ASSET_NAMES: tuple[str, ...] = tuple(CATALOGUE)


def known(name: str) -> Asset:
    """The asset called ``name``; raises ``AssetError`` listing the valid names when there is none."""
    if name not in CATALOGUE:
        raise AssetError(f"unknown asset {name!r}: valid names are {', '.join(ASSET_NAMES)}")
    return CATALOGUE[name]


def chosen(names: Iterable[str] | str | None) -> list[str]:
    """The names asked for (a name, several, or None / none for all), each checked."""
    if isinstance(names, str):
        names = [names]
    picked = [known(name).name for name in names or ()]
    return picked or list(ASSET_NAMES)
