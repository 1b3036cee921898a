"""Tokenize once, then batch with dynamic padding; the batch order is a pure function of (seed, epoch)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class TokenizedSplit:
    """Token ids (unpadded, truncated) and class labels of one split."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def tokenize(examples: list[dict], tokenizer, max_length: int) -> TokenizedSplit:
    """Tokenize the texts of ``examples`` without padding."""
    encoded = tokenizer([e["text"] for e in examples], truncation=True, max_length=max_length)
    return TokenizedSplit(encoded["input_ids"], [e["label"] for e in examples])


def batch_order(split: TokenizedSplit, batch_size: int, seed: int, epoch: int, group_by_length: bool):
    """The batches (lists of example indices) of one epoch: shuffled from ``seed`` and ``epoch``.

    With ``group_by_length``, indices are sorted by length inside chunks of 50 batches (as the Hugging Face
    ``LengthGroupedSampler`` does) and the batches are shuffled again, so padding shrinks but every epoch still sees
    each example once in a random order.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(split)))
    rng.shuffle(order)
    if group_by_length:
        chunk = 50 * batch_size
        order = [
            index
            for start in range(0, len(order), chunk)
            for index in sorted(order[start : start + chunk], key=lambda i: -len(split.input_ids[i]))
        ]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def sequential_batches(split: TokenizedSplit, batch_size: int):
    """Batches in data order (for evaluation)."""
    return [list(range(start, min(start + batch_size, len(split)))) for start in range(0, len(split), batch_size)]


def collate(split: TokenizedSplit, indices: list[int], pad_id: int, device=None) -> dict:
    """A batch of tensors: ``input_ids`` and ``attention_mask`` padded to the longest example, and ``labels``."""
    import torch

    rows = [split.input_ids[i] for i in indices]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        input_ids[row_index, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[row_index, : len(row)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([split.labels[i] for i in indices], dtype=torch.long),
    }
    return {key: value.to(device) for key, value in batch.items()} if device is not None else batch
