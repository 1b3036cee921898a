"""Checkpoints of the trainer: a directory per checkpoint, written atomically, read back without unpickling.

Checkpoint format: ``checkpoints/step-NNNNNNN/`` holds ``trainable.safetensors`` (the trainable weights),
``optimizer.safetensors`` (the optimizer's state tensors, keyed ``<parameter index>/<slot>``), ``rng.safetensors``
(the torch CPU and CUDA generator states), ``state.json`` (position, metrics history, schedule, the optimizer's
parameter groups and non-tensor state, the Python ``random`` state and the config fingerprint) and, written last,
``complete.json`` (the size of every other file). Loading never unpickles: safetensors files are a JSON header and
raw bytes, and JSON holds only plain values, so a checkpoint cannot run code. ``torch.load(weights_only=True)``
would still run a (restricted) unpickler and would need allow-listing for the Python RNG state and the history;
safetensors plus JSON also keeps every part readable by other tools.

A checkpoint is written into ``step-NNNNNNN.partial``, every file fsynced, then renamed into place with
``os.replace``, so a complete ``step-NNNNNNN`` directory only ever appears whole. A resume removes what a killed
write leaves (``*.partial``, a directory without ``complete.json``), skips a checkpoint that does not read back
(missing, truncated or garbled file) with a warning, removing it, and loads the newest one that does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TRAINABLE_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE = (
    "trainable.safetensors",
    "optimizer.safetensors",
    "rng.safetensors",
    "state.json",
)
#: Written last into a checkpoint: the size in bytes of each of its other files.
COMPLETE_MARKER = "complete.json"
PARTIAL_SUFFIX = ".partial"


class UnreadableCheckpoint(Exception):
    """A complete checkpoint whose files are missing, truncated, garbled or do not fit the model."""


def is_complete(path: Path) -> bool:
    """Whether the checkpoint directory ``path`` was renamed into place with its completion marker."""
    return not path.name.endswith(PARTIAL_SUFFIX) and (path / COMPLETE_MARKER).is_file()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer's ``state_dict`` as (its state tensors keyed ``<parameter index>/<slot>``, the JSON-able rest)."""
    import torch

    tensors, rest = {}, {}
    for index, slots in state_dict["state"].items():
        rest[str(index)] = {}
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{slot}"] = value.detach().cpu().contiguous()
            else:
                rest[str(index)][slot] = value
    return tensors, {"state": rest, "param_groups": state_dict["param_groups"]}


def join_optimizer_state(tensors: dict, rest: dict) -> dict:
    """The inverse of :func:`split_optimizer_state`."""
    state = {int(index): dict(slots) for index, slots in rest["state"].items()}
    for key, tensor in tensors.items():
        index, slot = key.split("/", 1)
        state[int(index)][slot] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def read(path: Path) -> dict:
    """The parts of the complete checkpoint ``path`` as the trainer loads them, read without unpickling; raises
    :class:`UnreadableCheckpoint` when a file is missing, truncated or garbled."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        sizes = json.loads((path / COMPLETE_MARKER).read_bytes())
        for name in (TRAINABLE_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE):
            actual = (path / name).stat().st_size
            if actual != sizes[name]:
                raise UnreadableCheckpoint(f"{name} has {actual} bytes, not {sizes[name]}")
        state = json.loads((path / STATE_FILE).read_bytes())
        missing = {"position", "history", "scheduler", "optimizer", "python_rng", "config"} - state.keys()
        if missing:
            raise UnreadableCheckpoint(f"{STATE_FILE} lacks {', '.join(sorted(missing))}")
        position = state["position"]
        version, internal, gauss_next = state["python_rng"]
        rng = load((path / RNG_FILE).read_bytes())
        return {
            "position": (position["global_step"], position["epoch"], position["batches_done"]),
            "history": state["history"],
            "scheduler": state["scheduler"],
            "config": state["config"],
            "python_rng": (version, tuple(internal), gauss_next),
            "torch_rng": rng["torch"],
            "cuda_rng": [rng[f"cuda.{index}"] for index in range(sum(key.startswith("cuda.") for key in rng))],
            "trainable": load((path / TRAINABLE_FILE).read_bytes()),
            "optimizer": join_optimizer_state(load((path / OPTIMIZER_FILE).read_bytes()), state["optimizer"]),
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise UnreadableCheckpoint(f"{type(error).__name__}: {error}") from error


def complete(directory: Path, pattern: str = "step-*") -> list[Path]:
    """The complete checkpoints in ``directory`` (renamed into place, with their completion marker), oldest first
    (``pattern``: ``round-*`` for a federation's round checkpoints)."""
    return sorted(p for p in directory.glob(pattern) if is_complete(p)) if directory.is_dir() else []


def unfinished(directory: Path) -> list[Path]:
    """What killed writes left in ``directory``: ``*.partial`` directories and directories without a marker."""
    return sorted(p for p in directory.glob("step-*") if not is_complete(p)) if directory.is_dir() else []


def write(final: Path, contents: dict[str, bytes]) -> None:
    """Write the checkpoint ``final`` atomically: every file of ``contents`` into ``<final>.partial`` and fsynced,
    the completion marker (each file's size) last, then one rename to ``final``."""
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in contents.items():
        _write_synced(partial / name, data)
    _write_synced(partial / COMPLETE_MARKER, json.dumps({name: len(data) for name, data in contents.items()}).encode())
    _sync_directory(partial)
    os.replace(partial, final)
    _sync_directory(final.parent)
