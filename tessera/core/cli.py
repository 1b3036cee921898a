"""The ``tessera`` command line: ``train`` (a Hydra application), ``plugins``, and the verbs of the subsystems.

User errors (:class:`~tessera.core.errors.TesseraError`, bad config overrides) print one line ``error: ...`` and
exit with status 2. ``tessera train`` discovers the plugins once (:func:`tessera.core.plugins.discover`), composes
and validates every job of the command (all combinations of a ``-m`` sweep) before Hydra creates any run
directory, then hands each job to :class:`tessera.core.job.Job` with those plugins (a job with ``trainer.processes``
above 1 to torchrun first, which runs it on that many ranks: :mod:`tessera.core.distributed`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
from pathlib import Path

import tessera
from tessera.core.errors import ConfigError, TesseraError
from tessera.core.plugins import Plugins, discover

log = logging.getLogger("tessera")

#: Hydra flags that print information instead of running a job: no validation before them.
_HYDRA_INFO_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-dir",
    "-cd",
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
}


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)


def prepare_hydra(plugins: Plugins) -> None:
    """Put the schema, the families' defaults and every registered technique config into Hydra's ConfigStore."""
    from tessera.core.config import store_schema

    store_schema()
    plugins.registry.store_configs()


def search_path_override(plugins: Plugins, overrides: list[str]) -> list[str]:
    """``overrides`` with the plugins' config directories (``tessera_config_search_path``) added to
    ``hydra.searchpath``, after any the user gave."""
    entries = plugins.config_search_path()
    if not entries:
        return list(overrides)
    given = [o for o in overrides if o.startswith("hydra.searchpath=")]
    rest = [o for o in overrides if o not in given]
    if given:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        entries = [*OverridesParser.create().parse_override(given[-1]).value(), *entries]
    return [f"hydra.searchpath=[{','.join(entries)}]", *rest]  # first: Hydra's parser takes overrides before flags


def compose_config(overrides: list[str], plugins: Plugins, with_hydra: bool = False):
    """Compose ``tessera train``'s config with ``overrides`` and the plugins' config directories (no run
    directory, no Hydra job); ``with_hydra``: with Hydra's own node (``hydra.launcher``...)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = search_path_override(plugins, overrides)
    if GlobalHydra.instance().is_initialized():  # inside the Hydra application: its config module is loaded
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    with initialize_config_module("tessera.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def _explain(error: Exception, overrides: list[str], plugins: Plugins) -> str:
    """One line for a Hydra / OmegaConf composition error, listing the valid names where there are some."""
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from tessera.core.techniques import CONFIG_FAMILIES

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"unknown {group or 'config'} '{name}': choose one of {', '.join(sorted(error.options))}"
    missing = re.search(r"Could not load '([^'/]+)/([^']+)'", str(error))
    if missing:
        from hydra.core.config_store import ConfigStore

        group, name = missing.groups()
        options = sorted(key.removesuffix(".yaml") for key in ConfigStore.instance().repo.get(group, {}))
        return f"unknown {group} '{name}': choose one of {', '.join(options)}"
    cause = error.__cause__
    key = getattr(cause, "full_key", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        parent_path, _, leaf = key.rpartition(".")
        if parent_path in CONFIG_FAMILIES:
            given = next((o for o in overrides if o.lstrip("+~").startswith(key + ".")), key)
            if leaf not in plugins.registry.names(parent_path):
                return f"{given}: unknown {parent_path} '{leaf}': choose one of {plugins.registry.choices(parent_path)}"
            return (
                f"{given} sets a parameter of {parent_path} '{leaf}', which is not selected: add {parent_path}={leaf} "
                f"(or {parent_path}=[...,{leaf}] to stack it with others)"
            )
        rest = [o for o in overrides if not o.lstrip("+~").startswith((key + "=", key + "."))]
        base = compose_config(rest, plugins, with_hydra=key.startswith("hydra."))
        parent = OmegaConf.select(base, parent_path) if parent_path else base
        valid = sorted(parent.keys()) if hasattr(parent, "keys") else []
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" (did you mean {parent_path + '.' if parent_path else ''}{close[0]}?)" if close else ""
        return f"unknown parameter '{key}'{hint}: valid keys of {parent_path or 'the config'} are {', '.join(valid)}"
    if key and isinstance(cause, ValidationError):
        return f"invalid value for '{key}': {str(cause).splitlines()[0]}"
    return str(error).strip().splitlines()[0]


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of every job the command starts (the sweep expanded)."""
    job_overrides = [
        o for o in overrides if not o.startswith("-") and not o.lstrip("+~").startswith(("hydra.", "hydra/"))
    ]
    if not multirun:
        return [job_overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(job_overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def validate(overrides: list[str], plugins: Plugins, multirun: bool = False) -> list:
    """Compose and validate every job of the command; return their configs; raise ``ConfigError`` / ``DataError``
    on the first problem."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tessera.core import job

    configs = []
    for overrides_of_job in _jobs(overrides, multirun):
        try:
            cfg = compose_config(overrides_of_job, plugins)
            stages = job.plan(cfg, overrides_of_job, lambda o: compose_config(o, plugins), run_dir=None)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(_explain(error, overrides_of_job, plugins)) from None
        job.validate(stages, plugins)
        configs.append(cfg)
    return configs


def _launcher(overrides: list[str], plugins: Plugins):
    """The config node of the Hydra launcher the command runs its jobs with (``hydra/launcher=joblib``...)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    first_job = _jobs(overrides, multirun=True)[0]
    try:
        return compose_config([*first_job, *hydra_overrides], plugins, with_hydra=True).hydra.launcher
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_explain(error, hydra_overrides, plugins)) from None


def _with_thread_default(overrides: list[str], configs: list, plugins: Plugins) -> list[str]:
    """``overrides`` plus ``trainer.num_threads=<cores // jobs at a time>`` when the launcher runs several jobs at
    a time and no job sets its threads (:func:`tessera.core.sweep.threads_per_job`)."""
    from tessera.core.sweep import threads_per_job

    threads = threads_per_job(_launcher(overrides, plugins), configs)
    if threads is None:
        return overrides
    print(
        f"sweep: {len(configs)} jobs, trainer.num_threads={threads} each (the cores shared by the parallel jobs)",
        file=sys.stderr,
    )
    last = max(i for i, o in enumerate(overrides) if not o.startswith("-"))  # Hydra wants overrides together
    return [*overrides[: last + 1], f"trainer.num_threads={threads}", *overrides[last + 1 :]]


def _warn(plugins: Plugins) -> None:
    for failure in plugins.failures:
        print(f"warning: skipped plugin {failure.name}: {failure.error} (see `tessera plugins`)", file=sys.stderr)
    for warning in plugins.warnings:
        print(f"warning: {warning}", file=sys.stderr)


class JobTask:
    """The Hydra task function of ``tessera train``: plan and run the job of one run or sweep job.

    It holds the command's plugins. Pickled for a launcher's worker process (joblib), it leaves them behind and the
    worker discovers its own, from the same environment (Hydra hands the worker the ConfigStore). In a sweep a job
    that fails is recorded (its ``run.json``, one line on stderr) and the sweep goes on with the others; a single
    run's user error is one line and exit status 2.
    """

    def __init__(self, plugins: Plugins):
        self.plugins = plugins

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.plugins = None

    def __call__(self, cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from tessera.core import distributed, job

        if self.plugins is None:
            self.plugins = discover()
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        job_overrides = list(hydra_cfg.overrides.task)
        sweep = hydra_cfg.mode == RunMode.MULTIRUN
        try:
            if distributed.needs_launch(cfg):
                searchpath = [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath=")]
                return distributed.launch(cfg, [*job_overrides, *searchpath], run_dir)
            stages = job.plan(cfg, job_overrides, lambda o: compose_config(o, self.plugins), run_dir)
            return job.Job(stages, run_dir, self.plugins, discard_refused=not sweep).run()
        except TesseraError as error:
            if not sweep:
                _fail(error)
            print(f"error: job {hydra_cfg.job.num} ({' '.join(job_overrides)}): {error}", file=sys.stderr)
            _record_failure(run_dir, error)
        except Exception as error:
            if not sweep:
                raise
            log.exception("job %s (%s) failed", hydra_cfg.job.num, " ".join(job_overrides))
            _record_failure(run_dir, error)
        return None


def _record_failure(run_dir: Path, error: Exception) -> None:
    """Write a failed job's ``run.json`` unless its stages already did (it failed before they ran)."""
    from tessera.core.pipeline import ended, status, write_status

    if status(run_dir).get("status") != "failed":
        state, details = ended(error, run_dir)
        write_status(run_dir, state, **details)


def train(overrides: list[str]) -> int:
    """``tessera train [hydra overrides]``: validate, then run the Hydra application, one :class:`Job` a run (a
    sweep's jobs through its launcher, then its summary: :mod:`tessera.core.sweep`)."""
    import hydra

    from tessera.core import distributed

    plugins = discover()
    _warn(plugins)
    plugins.check_strict()
    prepare_hydra(plugins)
    if not _HYDRA_INFO_FLAGS.intersection(overrides):
        multirun = bool({"-m", "--multirun"}.intersection(overrides))
        try:
            configs = validate(overrides, plugins, multirun=multirun)
            if multirun:
                overrides = _with_thread_default(overrides, configs, plugins)
        except TesseraError as error:
            _fail(error)

    task = hydra.main(config_path="pkg://tessera.conf", config_name="config", version_base="1.3")(JobTask(plugins))

    if distributed.launched():
        try:
            overrides = distributed.rank_overrides(distributed.agreed_run_dir(overrides))
        except TesseraError as error:
            _fail(error)
    sys.argv = ["tessera train", *search_path_override(plugins, overrides)]
    task()
    return 0


def plugins_report(plugins: Plugins) -> dict:
    """``{"plugins": [{"name", "version", "distribution"}...], "techniques": {family: [names]},
    "providers": {"family/name": plugin}, "failed": [{"name", "error"}...], "warnings": [...]}``."""
    from tessera.core.techniques import FAMILIES

    return {
        "plugins": [
            {"name": i.name, "version": i.version, "distribution": i.distribution} for i in plugins.infos.values()
        ],
        "techniques": {family: plugins.registry.names(family) for family in FAMILIES},
        "providers": {f"{spec.family}/{spec.name}": spec.plugin for spec in plugins.registry.specs()},
        "failed": [{"name": f.name, "error": f.error} for f in plugins.failures],
        "warnings": list(plugins.warnings),
    }


def show_plugins(as_json: bool, strict: bool) -> int:
    """``tessera plugins [--json] [--strict]``: exit status 1 in strict mode when a plugin was skipped."""
    plugins = discover()
    report = plugins_report(plugins)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("plugins:")
        for plugin in report["plugins"]:
            print(f"  {plugin['name']:<28} {plugin['version']:<10} ({plugin['distribution']})")
        print("techniques:")
        for family, names in report["techniques"].items():
            shown = [
                name
                if report["providers"][f"{family}/{name}"].startswith("tessera.")
                else f"{name} [{report['providers'][f'{family}/{name}']}]"
                for name in names
            ]
            print(f"  {family:<11} {', '.join(shown) or '-'}")
        for failure in report["failed"]:
            print(f"skipped plugin {failure['name']}: {failure['error']}", file=sys.stderr)
        for warning in report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    try:
        plugins.check_strict(strict)
    except TesseraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


#: Verbs that parse their own arguments: name -> (help, "module:function" called with the remaining argv).
DELEGATED_COMMANDS = {
    "train": ("compose techniques and train (Hydra overrides follow)", "tessera.core.cli:train"),
    "ensemble": (
        "combine trained runs or models: ensemble METHOD DIR... [overrides]",
        "tessera.core.ensemble_cli:main",
    ),
    "federate": (
        "run a federated stage on a Flower deployment (local, or --superlink HOST:PORT) [overrides]",
        "tessera.federated.deploy:main",
    ),
    "tune": ("run or continue an Optuna study over tessera train runs (tune.space=...)", "tessera.tune.cli:main"),
    "assets": ("fetch / verify / list the offline assets", "tessera.core.assets:main"),
    "kg": ("knowledge graphs: info / load / query / embed", "tessera.graphs.cli:main"),
    "serve": ("serve a run's export through vLLM's OpenAI-compatible API", "tessera.serving.cli:serve"),
    "predict": ("batch inference on a file through vLLM (or transformers)", "tessera.serving.cli:predict"),
    "registry": (
        "a model registry: add / list / show / promote, backup / restore / verify",
        "tessera.registry.cli:main",
    ),
    "monitor": (
        "drift of a served-traffic log against the export's reference: report and plots",
        "tessera.monitor.cli:main",
    ),
    "eval": (
        "evaluate a trained run, clean and under attack (attack=synonym,charnoise)",
        "tessera.robustness.cli:main",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tessera`` console script."""
    import importlib

    parser = argparse.ArgumentParser(prog="tessera", description=tessera.__doc__)
    parser.add_argument("--version", action="version", version=f"tessera {tessera.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, _) in DELEGATED_COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    listing = commands.add_parser("plugins", help="list installed plugins and their techniques")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a plugin was skipped (also: TESSERA_PLUGINS_STRICT=1)",
    )
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in DELEGATED_COMMANDS:
            module, _, function = DELEGATED_COMMANDS[args.command][1].partition(":")
            return getattr(importlib.import_module(module), function)(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return show_plugins(args.json, args.strict)
    except TesseraError as error:
        _fail(error)
    except BrokenPipeError:  # `tessera plugins | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
