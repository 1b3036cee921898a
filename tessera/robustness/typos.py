"""Character-level noise: keyboard typos (a neighbouring key on a QWERTY layout), and character deletion,
insertion and swap of neighbours, one edit per word. The first letter of a word is kept (people read it first)."""

from __future__ import annotations

import random

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
#: The keys around each letter on a QWERTY keyboard (same row and the rows above and below).
KEYBOARD_NEIGHBOURS: dict[str, str] = {}
for _row_index, _row in enumerate(_ROWS):
    for _column, _key in enumerate(_row):
        _near = []
        for _other_index in (_row_index - 1, _row_index, _row_index + 1):
            if 0 <= _other_index < len(_ROWS):
                _other = _ROWS[_other_index]
                _near += [_other[c] for c in (_column - 1, _column, _column + 1) if 0 <= c < len(_other)]
        KEYBOARD_NEIGHBOURS[_key] = "".join(k for k in _near if k != _key)

#: The character edits, by name.
OPERATIONS = ("keyboard", "swap", "delete", "insert")


def _neighbour(char: str, rng: random.Random) -> str:
    near = KEYBOARD_NEIGHBOURS.get(char.lower())
    if not near:
        return char
    chosen = rng.choice(near)
    return chosen.upper() if char.isupper() else chosen


def edit(word: str, operation: str, rng: random.Random) -> str:
    """``word`` with one character edit ``operation`` at a random position after the first letter."""
    if len(word) < 2:
        return word
    position = rng.randrange(1, len(word))
    if operation == "keyboard":
        return word[:position] + _neighbour(word[position], rng) + word[position + 1 :]
    if operation == "delete":
        return word[:position] + word[position + 1 :]
    if operation == "insert":
        return word[:position] + _neighbour(word[position], rng) + word[position:]
    if operation == "swap":
        if len(word) < 3:
            return word
        position = rng.randrange(1, len(word) - 1)
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    raise ValueError(f"unknown character edit {operation!r}: choose one of {', '.join(OPERATIONS)}")


def variants(word: str, operations, rng: random.Random, count: int) -> list[str]:
    """Up to ``count`` distinct one-edit variants of ``word`` (different from it), for the attacks."""
    found: list[str] = []
    for attempt in range(count * 4):
        candidate = edit(word, operations[attempt % len(operations)], rng)
        if candidate != word and candidate not in found:
            found.append(candidate)
            if len(found) == count:
                break
    return found
