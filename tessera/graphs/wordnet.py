"""WordNet 3.0 from the packaged ``wordnet`` asset, through NLTK's reader (synsets, lemmas, relations, morphy).

This is the one way tessera reads WordNet: the knowledge-graph loader, the augmenters and the attacks all use
:func:`wordnet`. Nothing is downloaded; NLTK's own data downloader is never called.
"""

from __future__ import annotations

import functools
import warnings


@functools.cache
def wordnet():
    """The NLTK ``WordNetCorpusReader`` over the packaged WordNet 3.0 files (loaded once per process)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from tessera.core.assets import asset_path

    root = str(asset_path("wordnet"))
    if root not in nltk.data.path:
        nltk.data.path.append(root)  # NLTK reads only below its data path

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # the packaged files are WordNet 3.0 itself: no version mapping to load

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNet30(root, omw_reader=None)
