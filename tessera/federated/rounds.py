"""The server side of a federation: the rounds, each a Flower strategy's ``configure_train`` -> the grid ->
``aggregate_train``, then the global model evaluated on validation, the round's record and its checkpoint.

The loop is Flower's own ``Strategy.start`` (flwr 1.32.1) with what a training run needs besides: a resumable
checkpoint after every round (``rounds/round-NNNN``: the global arrays, the strategy's state such as FedAdam's
moments, the history and the Python RNG that samples clients), the ``min_clients`` rule for lost replies, a check
of every reply's tensors against the model, and the bytes each round moved. Federated evaluation on the clients is
not used: the server evaluates the global model on the validation split.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord

from tessera.core import checkpoints
from tessera.core.errors import TesseraError

log = logging.getLogger("tessera")
GLOBAL_FILE, STRATEGY_FILE, ROUND_STATE_FILE = "global.safetensors", "strategy.safetensors", "state.json"


class FederationError(TesseraError):
    """A federation that cannot go on (too few clients answered a round)."""


def record_bytes(record: ArrayRecord) -> int:
    """The bytes of the tensors of an ``ArrayRecord`` (what a round moves per message)."""
    return sum(len(array.data) for array in record.values())


@dataclass
class Federation:
    """One federation's server: ``strategy`` over ``grid`` for ``rounds`` rounds from ``initial`` (the global
    trainable parameters); ``evaluate(arrays)`` returns the global model's validation metrics; ``round_end(record)``
    is called after each round (the run's event); ``shapes`` are the trainable parameters' shapes, every reply is
    checked against them."""

    strategy: object
    grid: object
    initial: dict
    rounds: int
    min_clients: int
    evaluate: Callable[[dict], dict]
    round_end: Callable[[dict], None]
    directory: Path
    fingerprint: dict
    seed: int = 0
    timeout: float = 3600.0
    train_config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "rounds"

    def run(self, resume: bool) -> dict:
        """Run the remaining rounds (after the last complete checkpoint when ``resume``) and return the final global
        arrays (float32 torch tensors by name)."""
        arrays, start = ArrayRecord(self.initial), 1
        if resume:
            restored = self._restore()
            if restored is not None:
                arrays, start = restored
        else:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        for server_round in range(start, self.rounds + 1):
            arrays = self._round(server_round, arrays)
        return {name: tensor.float() for name, tensor in arrays.to_torch_state_dict().items()}

    def _round(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        from tessera.federated.client import check_arrays

        started = time.perf_counter()
        random.seed(self.seed * 1_000_003 + server_round)  # Flower's node sampling draws from `random`
        messages = list(
            self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(self.train_config)), self.grid)
        )
        sent = sum(record_bytes(m.content.array_records["arrays"]) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        answered, lost = [], []
        shapes = {name: tuple(tensor.shape) for name, tensor in self.initial.items()}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                lost.append(f"node {node}: {reply.error.reason}")
                continue
            try:
                check_arrays(reply.content.array_records["arrays"], shapes)
            except (KeyError, ValueError) as error:
                lost.append(f"node {node} sent parameters that do not fit the model ({error}): its update is ignored")
                continue
            answered.append(reply)
        missing = len(messages) - len(replies)
        lost += [f"{missing} node(s) did not answer within {self.timeout:g} s"] if missing else []
        for line in lost:
            log.warning("round %d: %s", server_round, line)
        if len(answered) < self.min_clients:
            raise FederationError(
                f"round {server_round}: only {len(answered)} of {len(messages)} clients answered, fewer than "
                f"federated.min_clients={self.min_clients} ({lost[0] if lost else 'no replies'}); lower "
                "federated.min_clients or fix the failing clients, then rerun with resume=true"
            )
        aggregated, train_metrics = self.strategy.aggregate_train(server_round, answered)
        if aggregated is None:
            raise FederationError(f"round {server_round}: the aggregator returned no model")
        received = sum(record_bytes(m.content.array_records["arrays"]) for m in answered)
        aggregated = ArrayRecord({k: t.float() for k, t in aggregated.to_torch_state_dict().items()})
        validation = self.evaluate(aggregated.to_torch_state_dict())
        record = {
            "round": server_round,
            "clients": len(messages),
            "answered": len(answered),
            "lost": len(messages) - len(answered),
            "bytes_sent": sent,
            "bytes_received": received,
            "train": dict(train_metrics or {}),
            "validation": validation,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(record)
        self.round_end(record)
        self._checkpoint(server_round, aggregated)
        return aggregated

    # --- checkpoints ---------------------------------------------------------------------------------------

    def _checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        from safetensors.torch import save

        tensors, scalars = strategy_state(self.strategy)
        state = {
            "round": server_round,
            "history": self.history,
            "strategy": scalars,
            "python_rng": random.getstate(),
            "config": self.fingerprint,
        }
        checkpoints.write(
            self.checkpoint_dir / f"round-{server_round:04d}",
            {
                GLOBAL_FILE: save({k: t.contiguous() for k, t in arrays.to_torch_state_dict().items()}),
                STRATEGY_FILE: save(tensors),
                ROUND_STATE_FILE: json.dumps(state).encode(),
            },
        )
        for old in self._complete()[:-1]:
            shutil.rmtree(old, ignore_errors=True)

    def _complete(self) -> list[Path]:
        directory = self.checkpoint_dir
        found = directory.glob("round-*") if directory.is_dir() else []
        return sorted(p for p in found if checkpoints.is_complete(p))

    def _restore(self) -> tuple[ArrayRecord, int] | None:
        """The global arrays and the next round from the newest round checkpoint that reads back, or None."""
        from safetensors.torch import load

        from tessera.core.trainer import refuse_another_config

        for path in reversed(self._complete()):
            try:
                sizes = json.loads((path / checkpoints.COMPLETE_MARKER).read_bytes())
                for name, size in sizes.items():
                    if (path / name).stat().st_size != size:
                        raise ValueError(f"{name} is truncated")
                state = json.loads((path / ROUND_STATE_FILE).read_bytes())
                arrays = load((path / GLOBAL_FILE).read_bytes())
                tensors = load((path / STRATEGY_FILE).read_bytes())
            except (OSError, ValueError, KeyError) as error:
                log.warning("skipping the unreadable round checkpoint %s (%s): removed", path.name, error)
                shutil.rmtree(path, ignore_errors=True)
                continue
            refuse_another_config(path, state["config"], self.fingerprint)
            restore_strategy(self.strategy, tensors, state["strategy"])
            version, internal, gauss = state["python_rng"]
            random.setstate((version, tuple(internal), gauss))
            self.history = state["history"]
            log.info("resuming the federation after round %d of %d", state["round"], self.rounds)
            return ArrayRecord(arrays), state["round"] + 1
        log.info("resume: no round checkpoint in %s: starting from round 1", self.checkpoint_dir)
        return None


# --- a strategy's state, for round checkpoints -----------------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


def _strategies(strategy, prefix: str = ""):
    """``(path, strategy)`` for a strategy and those it wraps (``.strategy`` of the DP wrappers)."""
    yield prefix, strategy
    inner = getattr(strategy, "strategy", None)
    if inner is not None and inner is not strategy:
        yield from _strategies(inner, f"{prefix}strategy.")


def strategy_state(strategy) -> tuple[dict, dict]:
    """A strategy's learned state as ``(tensors, scalars)``: its numpy dicts and lists and ``ArrayRecord``
    attributes (FedAdam's moments, FedAvgM's momentum) and its plain numbers (an adaptive clipping norm)."""
    import numpy as np
    import torch

    tensors, scalars = {}, {}
    for prefix, part in _strategies(strategy):
        for attribute, value in vars(part).items():
            key = prefix + attribute
            if isinstance(value, _SCALARS):
                scalars[key] = value
            elif isinstance(value, ArrayRecord):
                scalars[key] = {"kind": "record"}
                tensors.update({f"{key}/{k}": t.contiguous() for k, t in value.to_torch_state_dict().items()})
            elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                scalars[key] = {"kind": "dict"}
                tensors.update({f"{key}/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in value.items()})
            elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                scalars[key] = {"kind": "list", "length": len(value)}
                tensors.update({f"{key}/{i}": torch.from_numpy(np.ascontiguousarray(v)) for i, v in enumerate(value)})
    return tensors, scalars


def restore_strategy(strategy, tensors: dict, scalars: dict) -> None:
    """Set back what :func:`strategy_state` captured."""
    parts = dict(_strategies(strategy))
    for key, value in scalars.items():
        prefix, _, attribute = key.rpartition(".")
        part = parts.get(prefix + "." if prefix else "")
        if part is None:
            continue
        if not isinstance(value, dict):
            setattr(part, attribute, value)
            continue
        found = {name[len(key) + 1 :]: t for name, t in tensors.items() if name.startswith(key + "/")}
        if value["kind"] == "record":
            setattr(part, attribute, ArrayRecord(found))
        elif value["kind"] == "dict":
            setattr(part, attribute, {k: t.numpy() for k, t in found.items()})
        else:
            setattr(part, attribute, [found[str(i)].numpy() for i in range(value["length"])])
