"""The features of a text that drift is measured on, and of the classifier's answer to it.

- ``tokens``: the text's length in the model's tokens, special tokens excluded, before any truncation.
- ``oov_share``: the share of the text's words that never occur in the training split; a word is a maximal run of
  letters, lowercased (``"Don't"`` is ``don`` and ``t``; digits and punctuation are not words). A text without
  words has no share (``None``).
- ``confidence``: the predicted label's probability; ``label``: the predicted label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The numeric features, compared by a KS test and by PSI over the reference's quantile bins.
NUMERIC_FEATURES = ("tokens", "oov_share", "confidence")
#: The categorical feature, compared by PSI over the label shares.
LABEL_FEATURE = "label"
FEATURES = (*NUMERIC_FEATURES, LABEL_FEATURE)

_WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of letters, lowercased."""
    return _WORD.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word that occurs in ``texts``."""
    return {word for text in texts for word in words(text)}


def oov_share(text: str, known: set[str]) -> float | None:
    """The share of ``text``'s words not in ``known``; None for a text without words."""
    found = words(text)
    return sum(word not in known for word in found) / len(found) if found else None


def input_features(texts: list[str], tokenizer, known: set[str]) -> list[dict]:
    """``{"tokens": ..., "oov_share": ...}`` for each text (``tokenizer``: the served model's)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [{"tokens": length, "oov_share": oov_share(text, known)} for text, length in zip(texts, lengths)]
