"""The Flower app of a federated stage on a real deployment: ``serverapp`` and ``clientapp``, which
``flower-superlink`` / ``flower-supernode`` load from a Flower app whose ``pyproject.toml`` names them
(``[tool.flwr.app.components]``; ``tessera federate`` writes it, :mod:`tessera.federated.deploy`).

The run config (``[tool.flwr.app.config]``) carries :data:`CONFIG_KEY`, the fully resolved tessera config as YAML,
and :data:`RUN_DIR_KEY`, the run directory on the SuperLink's machine. The ServerApp prepares the stage from that
config and runs the same federated stage as ``tessera train aggregator=...`` on the grid Flower hands it, so the
run directory gets the usual ``run.json``, ``metrics.json``, round checkpoints and ``export/``. A SuperNode's
ClientApp builds its :class:`~tessera.federated.client.LocalTraining` from the same config (its own copy of the
data and model: ``data.path`` and ``asset:`` names resolve on the node's machine) and its node config's
``partition-id`` / ``num-partitions``; it builds only its own partition's training items, once per process and
config. Its mod :func:`config_mods` applies the client mods of the run config's federation (SecAgg+, client-side
clipping, DP's equal weights) as the in-process grid does.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tessera.core.errors import ConfigError
from tessera.federated.client import client_app

log = logging.getLogger("tessera")
#: Run-config keys: the resolved tessera config (YAML text) and the run directory on the SuperLink's machine.
CONFIG_KEY, RUN_DIR_KEY = "tessera-config", "run-dir"
_LOG_FORMAT = "[%(asctime)s][tessera][%(levelname)s] - %(message)s"


def load_config(text: str):
    """The tessera config of a run config's YAML text, read-only for new keys (as Hydra's composed config is)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(text)
    OmegaConf.set_struct(cfg, True)
    return cfg


def run_settings(context: Context) -> tuple[str, str]:
    """``(config YAML, run directory)`` from a Flower context's run config; one line when they are missing."""
    config, run_dir = context.run_config.get(CONFIG_KEY), context.run_config.get(RUN_DIR_KEY)
    if not isinstance(config, str) or not config.strip():
        raise ConfigError(
            f"the Flower run config has no '{CONFIG_KEY}': start tessera's app with `tessera federate` "
            "(it writes the app's pyproject.toml with the tessera config)"
        )
    return config, str(run_dir or "")


def _log_to(directory: Path | None) -> None:
    """Send tessera's INFO lines to stderr (Flower streams it to ``flwr run --stream``) and ``train.log``."""
    logger = logging.getLogger("tessera")
    logger.setLevel(logging.INFO)
    handlers = [logging.StreamHandler(sys.stderr)]
    if directory is not None:
        handlers.append(logging.FileHandler(directory / "train.log", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        logger.addHandler(handler)


# --- the server ------------------------------------------------------------------------------------------------

serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated stage of the run config on Flower's ``grid``."""
    serve(grid, context)


def serve(grid: Grid, context: Context) -> dict:
    """Prepare the stage of the run config in its run directory, put ``grid`` in ``run.state`` and execute it;
    return the test metrics. The directory gets ``.hydra/config.yaml`` (the config, as ``tessera train`` saves
    it, for ``tessera serve`` / ``eval``) and ``train.log``."""
    from tessera.core.files import write_text
    from tessera.core.pipeline import execute, prepare
    from tessera.core.plugins import discover
    from tessera.federated.stage import GRID_KEY

    text, run_dir = run_settings(context)
    if not run_dir:
        raise ConfigError(f"the Flower run config has no '{RUN_DIR_KEY}': give the run directory")
    directory = Path(run_dir).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    _log_to(directory)
    cfg = load_config(text)
    if not cfg.aggregator:
        raise ConfigError("the tessera config selects no aggregator: a Flower deployment runs a federated stage")
    saved = directory / ".hydra" / "config.yaml"
    if not (cfg.resume and saved.is_file()):  # a resumed run keeps its saved config (max_length: auto resolved)
        saved.parent.mkdir(exist_ok=True)
        write_text(saved, text)
    run, splits = prepare(cfg, directory, discover())
    run.state[GRID_KEY] = grid
    log.info("run directory: %s", directory)
    log.info("composition: %s (on a Flower deployment)", run.composition.describe())
    return execute(run, splits)


# --- the clients -----------------------------------------------------------------------------------------------

#: The LocalTraining this process built, by (config hash, partition).
_BUILT: dict[tuple[str, int], object] = {}


def node_partition(context: Context, clients: int) -> int:
    """The node's ``partition-id``, checked against its ``num-partitions`` and ``federated.clients``."""
    node = context.node_config
    missing = [key for key in ("partition-id", "num-partitions") if key not in node]
    if missing:
        raise ConfigError(
            f"the SuperNode has no {' and no '.join(missing)} in its node config: start it with "
            f'--node-config "partition-id=N num-partitions={clients}"'
        )
    partition, partitions = int(node["partition-id"]), int(node["num-partitions"])
    if partitions != clients:
        raise ConfigError(
            f"the SuperNode has num-partitions={partitions}, but the run has federated.clients={clients}: start "
            f"every SuperNode with num-partitions={clients} (or set federated.clients={partitions})"
        )
    if not 0 <= partition < partitions:
        raise ConfigError(f"the SuperNode has partition-id={partition}: it must be in 0..{partitions - 1}")
    return partition


def local_training(context: Context):
    """The :class:`~tessera.federated.client.LocalTraining` of this node: the stage's model and its partition's
    training items, built once per process and config (a scratch run directory, removed at exit)."""
    from tessera.core.pipeline import build, prepare
    from tessera.core.plugins import discover
    from tessera.federated.stage import local_training as build_local

    text, _ = run_settings(context)
    cfg = load_config(text)
    partition = node_partition(context, cfg.federated.clients)
    key = (hashlib.sha256(text.encode()).hexdigest(), partition)
    if key not in _BUILT:
        scratch = Path(tempfile.mkdtemp(prefix=f"tessera-client-{partition}-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        run, splits = prepare(cfg, scratch, discover())
        built = build(run, splits, {}, evaluation=False)
        _BUILT[key] = build_local(run, built, only=partition)[0]
    return _BUILT[key]


#: The client mods of each run config this process served, by config hash.
_MODS: dict[str, list] = {}


def config_mods(message, context: Context, call_next):
    """A Flower client mod: the client mods of the run config's federation
    (:meth:`~tessera.federated.privacy.Privacy.client_mods`, outermost first) around ``call_next``; none without
    privacy settings. Flower fixes a ClientApp's mods when it is made, before any run config is known."""
    from tessera.federated.privacy import Privacy

    text, _ = run_settings(context)
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _MODS:
        _MODS[key] = Privacy(load_config(text)).client_mods()
    handler = call_next
    for mod in reversed(_MODS[key]):
        handler = functools.partial(_around, mod, handler)
    return handler(message, context)


def _around(mod, inner, message, context):
    return mod(message, context, inner)


clientapp = client_app(local_training, [config_mods])
