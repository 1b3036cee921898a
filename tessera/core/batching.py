"""Batches from training items with dynamic padding; the batch order is a pure function of (seed, epoch).

An item is a dict built by an objective: token-id lists (``input_ids``, ``token_type_ids``, token-level targets
such as ``lm_labels``) and scalar targets (``labels``, ``next_sentence_label``).
"""

from __future__ import annotations

import random

#: The keys of a batch that are model inputs; every other key is a target for the objectives.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Padding value of token-level lists other than ``input_ids`` (targets are ignored there).
_PAD_VALUES = {"token_type_ids": 0, "attention_mask": 0}
IGNORE_INDEX = -100


def batch_order(
    items: list[dict],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    processes: int = 1,
    rank: int = 0,
):
    """The batches (lists of item indices) of one epoch: shuffled from ``seed`` and ``epoch``.

    With ``group_by_length``, indices are sorted by length inside chunks of 50 batches (as the Hugging Face
    ``LengthGroupedSampler`` does) and the batches are shuffled again, so padding shrinks but every epoch still sees
    each item once in a random order.

    With several ``processes``, the epoch is cut into batches of ``batch_size x processes`` items, and ``rank``
    gets every ``processes``-th item of each (its share, of similar lengths as the others'): each item is seen once
    per epoch across the ranks. When the items do not divide by ``processes``, the first ones of the shuffled order
    are repeated to fill the last batch (at most ``processes - 1``, as torch's ``DistributedSampler`` does), so that
    every rank takes the same number of steps.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    order += order[: -len(order) % processes] if processes > 1 else []
    step = batch_size * processes
    if group_by_length:
        chunk = 50 * step
        order = [
            index
            for start in range(0, len(order), chunk)
            for index in sorted(order[start : start + chunk], key=lambda i: -len(items[i]["input_ids"]))
        ]
    batches = [order[start : start + step] for start in range(0, len(order), step)]
    if group_by_length:
        rng.shuffle(batches)
    return [batch[rank::processes] for batch in batches] if processes > 1 else batches


def sequential_batches(items: list[dict], batch_size: int):
    """Batches in item order (for evaluation)."""
    return [list(range(start, min(start + batch_size, len(items)))) for start in range(0, len(items), batch_size)]


def _span(length: int, width: int, padding_side: str) -> slice:
    return slice(width - length, width) if padding_side == "left" else slice(0, length)


def collate(items: list[dict], indices: list[int], pad_id: int, device=None, padding_side: str = "right") -> dict:
    """A batch of tensors: token-level lists padded to the longest item (``input_ids`` with ``pad_id``, targets with
    -100), an ``attention_mask``, and scalar targets as tensors."""
    import torch

    rows = [items[i] for i in indices]
    width = max(len(row["input_ids"]) for row in rows)
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if not isinstance(values[0], list):
            batch[key] = torch.tensor(values)
            continue
        fill = pad_id if key == "input_ids" else _PAD_VALUES.get(key, IGNORE_INDEX)
        tensor = torch.full((len(rows), width), fill, dtype=torch.long)
        for row_index, value in enumerate(values):
            tensor[row_index, _span(len(value), width, padding_side)] = torch.tensor(value, dtype=torch.long)
        batch[key] = tensor
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        mask[row_index, _span(len(row["input_ids"]), width, padding_side)] = 1
    batch["attention_mask"] = mask
    return {key: value.to(device) for key, value in batch.items()} if device is not None else batch


def model_inputs(batch: dict) -> dict:
    """The part of ``batch`` the model's forward takes."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}
