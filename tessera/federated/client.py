"""The client side of a federation: a Flower ``ClientApp`` whose ``train`` handler runs a round of tessera's own
training on the node's partition.

The message carries the global model's trainable parameters (an ``ArrayRecord``: with LoRA, the adapter and the
head, not the base) and the round's config (``server-round``, and ``proximal-mu`` from FedProx); the reply carries
the trained parameters and a ``MetricRecord`` with ``num-examples`` (the weight of the update) and ``train_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tessera.core.run import Run


def trainable_state(model) -> dict:
    """The model's trainable parameters by name, detached float32 CPU copies: what travels each round."""
    return {
        name: parameter.detach().float().cpu().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable(model, arrays: dict) -> None:
    """Copy ``arrays`` (every trainable parameter by name) into ``model``; a missing name or a tensor of the wrong
    shape raises ``ValueError`` naming it."""
    import torch

    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    check_arrays(arrays, {name: tuple(p.shape) for name, p in parameters.items()})
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(torch.as_tensor(arrays[name]).to(parameter.dtype))


def check_arrays(arrays: dict, shapes: dict[str, tuple]) -> None:
    """Raise ``ValueError`` unless ``arrays`` holds exactly the tensors ``shapes`` names, of those shapes."""
    missing = sorted(shapes.keys() - arrays.keys())
    extra = sorted(arrays.keys() - shapes.keys())
    if missing or extra:
        raise ValueError(
            f"the parameters do not fit the model: {len(missing)} missing ({', '.join(missing[:2])}), "
            f"{len(extra)} unknown ({', '.join(extra[:2])})"
        )
    for name, shape in shapes.items():
        if tuple(arrays[name].shape) != shape:
            raise ValueError(f"parameter {name} has shape {list(arrays[name].shape)}, the model's is {list(shape)}")


def proximal_term(global_arrays: dict, mu: float) -> Callable:
    """FedProx's loss term (Li et al. 2020): ``loss + mu / 2 * ||w - w_global||^2`` over the trainable parameters."""

    def term(loss, model):
        anchors = {}
        penalty = 0.0
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and name in global_arrays:
                anchor = anchors.setdefault(name, global_arrays[name].to(parameter.device, parameter.dtype))
                penalty = penalty + (parameter - anchor).pow(2).sum()
        return loss + mu / 2 * penalty

    return term


@dataclass
class LocalTraining:
    """What every client of one federation shares: the run, the model to train (its trainable parameters are
    overwritten by each round's global ones), the tokenizer and the training items of each partition.

    ``corrupt`` (set by an attack, :mod:`tessera.federated.attacks`) maps ``(partition, global arrays, trained
    arrays, config)`` to the update a Byzantine client sends instead; None for honest clients. ``attackers`` are the
    partition ids that attack. A partition past the clients' (``partitions[federated.clients]``) is the server's
    root set (FLTrust)."""

    run: Run
    model: object
    tokenizer: object
    partitions: list[list[dict]]
    corrupt: Callable | None = None
    attackers: list[int] = field(default_factory=list)

    def settings(self, partition: int, server_round: int, examples: int):
        """The trainer settings of one client's round: the run's trainer with ``federated.local_epochs`` (or
        ``local_steps``) and a seed of its own per round and client."""
        from omegaconf import OmegaConf

        federated, trainer = self.run.cfg.federated, self.run.cfg.trainer
        epochs, steps = federated.local_epochs, federated.local_steps
        if steps:
            per_epoch = math.ceil(math.ceil(examples / trainer.batch_size) / trainer.gradient_accumulation_steps)
            epochs = math.ceil(steps / per_epoch)
        seed = trainer.seed * 1_000_003 + server_round * 10_007 + partition
        return OmegaConf.merge(trainer, {"epochs": epochs, "max_steps": steps, "seed": seed})

    def train(self, partition: int, arrays: dict, config: dict, honest: bool = False) -> tuple[dict, dict]:
        """Train the global ``arrays`` on ``partition`` for one round; return the trained arrays (corrupted by
        ``corrupt`` unless ``honest``) and the metrics."""
        from tessera.core.trainer import LocalRound, Trainer

        items = self.partitions[partition]
        if not items:
            raise ValueError(f"partition {partition} has no training examples")
        load_trainable(self.model, arrays)
        server_round = int(config.get("server-round", 0))
        mu = float(config.get("proximal-mu", 0.0))
        terms = (proximal_term(arrays, mu),) if mu > 0 else ()
        local = LocalRound(self.settings(partition, server_round, len(items)), terms)
        trainer = Trainer(self.run, self.model, items, self.tokenizer, None, local=local)
        trainer.fit()
        trained = trainable_state(self.model)
        if self.corrupt is not None and not honest:
            trained = self.corrupt(partition, arrays, trained, config)
        loss = trainer.history["train"][-1]["loss"]
        return trained, {"num-examples": len(items), "train_loss": loss, "steps": trainer.global_step}


def client_app(local_training: Callable[[Context], LocalTraining], mods: list | None = None) -> ClientApp:
    """The federation's ``ClientApp``: ``local_training(context)`` gives the node its :class:`LocalTraining` (in
    process, the one the server built; on a SuperNode, one built from the run config); ``mods`` are Flower client
    mods (client-side clipping for differential privacy, SecAgg+)."""
    app = ClientApp(mods=mods or [])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        local = local_training(context)
        partition = int(context.node_config["partition-id"])
        arrays = message.content.array_records["arrays"].to_torch_state_dict()
        config = dict(message.content.config_records.get("config", {}))
        trained, metrics = local.train(partition, arrays, config)
        content = RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=message)

    return app
