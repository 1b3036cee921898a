"""Flower's own simulation engine (ray, ``flwr[simulation]``: the ``bench`` extra) running tessera's ServerApp and
ClientApp (:mod:`tessera.federated.app`, the ones ``tessera federate`` deploys): ``bench/federated.py``'s peer
for the round time of tessera's in-process engine.

    python bench/flower_simulation.py RUN_DIR CPUS [tessera train overrides...]

The overrides are composed and checked as ``tessera federate`` does; ``flwr.simulation.run_simulation`` starts a
local ray cluster of ``CPUS`` CPUs, one ClientApp actor per CPU (``client_resources.num_cpus=1``), and
``federated.clients`` virtual SuperNodes (Flower gives each its ``partition-id`` / ``num-partitions``). The
ServerApp runs the federated stage in ``RUN_DIR`` exactly as on a deployment, so ``RUN_DIR/metrics.json`` has the
same per-round records (``seconds``) as an in-process run. ``run_simulation`` has no run config argument, so both
apps get the resolved config (:data:`~tessera.federated.app.CONFIG_KEY`) in their Flower context here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from tessera.federated.app import CONFIG_KEY, RUN_DIR_KEY, local_training, serve  # noqa: E402
from tessera.federated.client import client_app  # noqa: E402

#: The resolved tessera config (YAML) and the run directory; set by main() before the apps are shipped to ray.
SETTINGS: dict[str, str] = {}


def with_settings(context):
    context.run_config.update({CONFIG_KEY: SETTINGS["config"], RUN_DIR_KEY: SETTINGS["run_dir"]})
    return context


serverapp = ServerApp()


@serverapp.main()
def server(grid, context) -> None:
    serve(grid, with_settings(context))


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from tessera.federated.deploy import compose

    run_dir, cpus, overrides = Path(argv[0]).absolute(), int(argv[1]), argv[2:]
    cfg, _ = compose(overrides)
    SETTINGS.update(config=OmegaConf.to_yaml(cfg, resolve=True), run_dir=str(run_dir))
    settings = dict(SETTINGS)  # captured by value: the actors are other processes

    def node_training(context):  # a ClientApp's context is read-only: the node's own, with the run config
        from flwr.app import Context

        run_config = {CONFIG_KEY: settings["config"], RUN_DIR_KEY: settings["run_dir"]}
        return local_training(Context(context.run_id, context.node_id, context.node_config, context.state, run_config))

    run_simulation(
        server_app=serverapp,
        client_app=client_app(node_training),
        num_supernodes=cfg.federated.clients,
        backend_config={
            "init_args": {"num_cpus": cpus, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0},
        },
    )
    return 0


if __name__ == "__main__":
    from tessera.core.errors import TesseraError

    try:
        raise SystemExit(main(sys.argv[1:]))
    except TesseraError as error:  # a refusal: one line, as the tessera command line says it
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
