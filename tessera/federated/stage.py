"""A federated stage: the stage's data and model as a training stage builds them, the training split shared out
among clients, rounds of local training and aggregation on a Flower grid (tessera's in-process grid), then the
global model evaluated on test, compressed and exported like any trained model.

``metrics.json`` gets ``federated``: the partition (examples and labels per client), the aggregator and one record
per round (clients sampled, answered and lost, bytes sent and received, the aggregated training metrics, the
validation metrics and the seconds) and ``privacy`` (``federated.privacy``: the DP mode, secure aggregation, and
epsilon at delta, also in each round's record: :mod:`tessera.federated.privacy`).
"""

from __future__ import annotations

import logging
import math

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.pipeline import build, evaluate_test, export_model, phase
from tessera.core.run import Run
from tessera.federated.attacks import validate_attack
from tessera.federated.partition import label_counts, partition

log = logging.getLogger("tessera")
#: ``run.state`` key of the Flower grid a federated stage runs on; unset: tessera's in-process grid. A ServerApp
#: on a Flower deployment sets it to the grid Flower hands it.
GRID_KEY = "federated.grid"


def per_round(cfg) -> int:
    """The clients a round samples: ``federated.fraction`` of them, at least one."""
    return max(1, math.ceil(cfg.federated.fraction * cfg.federated.clients - 1e-9))


def required_answers(cfg) -> int:
    """The replies a round needs (``federated.min_clients``, or every sampled client)."""
    found = cfg.federated.min_clients
    return per_round(cfg) if found is None else found


def validate_federation(aggregator, composition) -> None:
    """Refuse a federated composition that cannot run, before any work (one line each)."""
    cfg = composition.cfg
    federated = cfg.federated
    aggregators = composition.selected("aggregator")
    if len(aggregators) > 1:
        raise IncompatibleError(aggregators[0].label, aggregators[1].label, "a federation has one aggregator")
    if composition.selected("ensemble"):
        raise IncompatibleError(
            aggregator.label, composition.selected("ensemble")[0].label, "an ensemble stage trains nothing"
        )
    for key in ("clients", "rounds", "local_epochs"):
        if federated[key] < 1:
            raise ConfigError(f"federated.{key}={federated[key]} must be at least 1")
    if federated.local_steps is not None and federated.local_steps < 1:
        raise ConfigError(f"federated.local_steps={federated.local_steps} must be at least 1 (or null: epochs)")
    if not 0 < federated.fraction <= 1:
        raise ConfigError(f"federated.fraction={federated.fraction} must be in (0, 1]")
    if not 0 <= federated.dropout < 1:
        raise ConfigError(f"federated.dropout={federated.dropout} must be in [0, 1)")
    sampled = per_round(cfg)
    needed = required_answers(cfg)
    if not 1 <= needed <= sampled:
        raise ConfigError(
            f"federated.min_clients={needed} must be between 1 and the {sampled} clients a round samples "
            f"(federated.clients={federated.clients} x federated.fraction={federated.fraction})"
        )
    if sampled < aggregator.min_clients():
        raise ConfigError(
            f"{aggregator.label} needs at least {aggregator.min_clients()} clients per round, but a round samples "
            f"{sampled} (federated.clients={federated.clients}, federated.fraction={federated.fraction}): "
            "add clients or choose another aggregator"
        )
    validate_attack(cfg)
    validate_privacy(aggregator, cfg)
    for compressor in composition.selected("compress"):
        if any(hasattr(compressor, hook) for hook in ("tessera_before_optimizer_step", "tessera_step_end")):
            raise IncompatibleError(
                aggregator.label,
                compressor.label,
                "it acts through the trainer's events, which a client's local round does not fire",
            )


def federated_stage(run: Run, splits, timings: dict) -> tuple[dict, dict]:
    """Federate, evaluate, compress and export; return the final test metrics and the rest of ``metrics.json``."""
    from tessera.core.evaluate import evaluate_objectives
    from tessera.core.trainer import config_fingerprint
    from tessera.federated.client import client_app, load_trainable, trainable_state
    from tessera.federated.grid import InProcessGrid
    from tessera.federated.privacy import Privacy
    from tessera.federated.rounds import Federation

    cfg, federated = run.cfg, run.cfg.federated
    built = build(run, splits, timings)
    model, tokenizer = built.model, built.tokenizer
    local, shares = local_training(run, built)
    aggregator = run.composition.selected("aggregator")[0]
    privacy = Privacy(cfg)
    strategy = privacy.wrap(aggregator.strategy(context(run, local)), per_round(cfg))
    grid = run.state.get(GRID_KEY) or InProcessGrid(
        client_app(lambda _: local, privacy.client_mods()), federated.clients, {}, federated.dropout, cfg.trainer.seed
    )
    initial = trainable_state(model)

    def evaluate(arrays: dict) -> dict:
        load_trainable(model, arrays)
        return evaluate_objectives(run, model, tokenizer, built.validation, "validation")

    def round_end(record: dict) -> None:
        run.events.evaluation("validation", record["validation"])
        run.events.federated_round_end(record["round"], record)
        log.info(
            "round %d/%d: %d of %d clients answered, %.1f MB sent, %.1f MB received, validation %s",
            record["round"],
            federated.rounds,
            record["answered"],
            record["clients"],
            record["bytes_sent"] / 1e6,
            record["bytes_received"] / 1e6,
            {k: round(v, 4) for k, v in record["validation"].items() if isinstance(v, float)},
        )

    federation = Federation(
        strategy,
        grid,
        initial,
        federated.rounds,
        required_answers(cfg),
        evaluate,
        round_end,
        run.dir,
        config_fingerprint(cfg),
        seed=cfg.trainer.seed,
        timeout=federated.timeout,
        exchange=privacy.exchange(max(len(share) for share in shares), federated.timeout),
        account=privacy.account,
    )
    run.total_steps = federated.rounds  # the progress of a federation is counted in rounds
    run.events.run_start()
    with phase("federate", timings):
        load_trainable(model, federation.run(bool(cfg.resume)))
    metrics = evaluate_test(run, model, tokenizer, built.test, timings)
    metrics, record = export_model(
        run, model, tokenizer, built.items, built.test, metrics, timings, drift_data=(built.train, built.validation)
    )
    summary = {
        "aggregator": aggregator.name,
        "clients": federated.clients,
        "partition": federated.partition,
        "examples_per_client": [len(share) for share in shares],
        "labels_per_client": label_counts(built.train, shares),
        "root_examples": aggregator.root_examples(),
        "attack": federated.attack,
        "attackers": local.attackers,
        "trainable_parameters": sum(t.numel() for t in initial.values()),
        "rounds": federation.history,
        "privacy": privacy.summary(federation.history),
    }
    return metrics, {**record, "federated": summary}


def validate_privacy(aggregator, cfg) -> None:
    """Refuse ``federated.privacy`` settings that cannot run (:func:`tessera.federated.privacy.validate`), and
    secure aggregation with an aggregator that needs the individual updates."""
    from tessera.federated.privacy import validate

    validate(cfg)
    privacy = cfg.federated.privacy
    if privacy.dp != "none" and not aggregator.sum_only:
        raise IncompatibleError(
            f"{aggregator.label} and federated.privacy.dp={privacy.dp} cannot be combined: the noise and the "
            f"accountant assume an average of clipped updates (sensitivity C/n), {aggregator.name}'s aggregate is not one"
        )
    if privacy.secagg and not aggregator.sum_only:
        raise IncompatibleError(
            f"{aggregator.label} and federated.privacy.secagg=true cannot be combined: {aggregator.name} needs every "
            "client's update, secure aggregation reveals only their sum"
        )


def local_training(run: Run, built, only: int | None = None):
    """The clients' :class:`~tessera.federated.client.LocalTraining` of a built stage, and each client's indices
    into the training split (``federated.partition``, seeded by ``trainer.seed``). An aggregator with a root set
    (``root_examples()``: FLTrust) gets a seeded sample of the training split kept out of the clients' partitions,
    as the extra partition ``federated.clients``. The attackers of ``federated.attack`` are installed. ``only``:
    build the training items of that partition alone (a SuperNode's client; the others are left empty)."""
    import random

    from tessera.federated import attacks
    from tessera.federated.client import LocalTraining

    cfg, federated = run.cfg, run.cfg.federated
    aggregator = run.composition.selected("aggregator")[0]
    held = aggregator.root_examples()
    if held and held > len(built.train) - federated.clients:
        raise ConfigError(
            f"{aggregator.label}: root_examples={held} leaves fewer training examples than the "
            f"{federated.clients} clients ({len(built.train)} in all): lower it"
        )
    root = sorted(random.Random(cfg.trainer.seed * 31 + 7).sample(range(len(built.train)), held)) if held else []
    kept = set(root)
    rest = [i for i in range(len(built.train)) if i not in kept]
    found = partition(
        [built.train[i] for i in rest], federated.clients, federated.partition, federated.alpha, cfg.trainer.seed
    )
    shares = [[rest[j] for j in share] for share in found]
    builder = run.composition.item_builder
    partitions = [
        builder.items([built.train[i] for i in share], built.tokenizer, cfg.data.max_length, cfg.trainer.seed)
        if only is None or position == only
        else []
        for position, share in enumerate(shares + ([root] if root else []))
    ]
    local = LocalTraining(run, built.model, built.tokenizer, partitions)
    attacks.install(local)
    return local, shares


def context(run: Run, local):
    """The :class:`~tessera.core.techniques.FederationContext` of a federation whose clients are ``local``."""
    from tessera.core.techniques import FederationContext

    federated = run.cfg.federated
    sampled = per_round(run.cfg)
    options = {
        "fraction_train": sampled / federated.clients,
        "fraction_evaluate": 0.0,
        "min_train_nodes": sampled,
        "min_available_nodes": federated.clients,
    }
    train_root = None
    if len(local.partitions) > federated.clients:  # the server's root set (FLTrust)

        def train_root(arrays: dict, server_round: int = 0) -> dict:
            return local.train(federated.clients, arrays, {"server-round": server_round}, honest=True)[0]

    return FederationContext(run, federated.clients, sampled, options, train_root)
