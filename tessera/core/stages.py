"""Multi-stage experiments: each stage is the job's config plus the stage's overrides, trained and exported in
``<run>/stages/<name>/``; a stage with ``init: previous`` starts from the export of the stage before it.

``experiment=dapt`` is the example: MLM on the unlabelled full reviews, then fine-tuning on the sentences, and
beside it the same fine-tuning from the base model. The run's ``metrics.json`` and ``report.md`` put the stages'
test metrics side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from tessera.core.errors import ConfigError
from tessera.core.files import write_json, write_text


@dataclass
class Stage:
    """A planned stage: its name, where its model starts, and its composed config."""

    name: str
    init: str
    cfg: DictConfig


def plan(cfg: DictConfig, job_overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> list[Stage]:
    """Compose the config of every stage of ``cfg`` (``compose`` maps overrides to a config)."""
    stages, names = [], set()
    for index, stage in enumerate(cfg.stages):
        if stage.init not in ("previous", "base"):
            raise ConfigError(f"stage '{stage.name}' has init={stage.init}: use previous or base")
        if stage.init == "previous" and index == 0:
            raise ConfigError(f"stage '{stage.name}' is the first stage: it cannot start from a previous one (init: base)")
        if stage.name in names:
            raise ConfigError(f"two stages are named '{stage.name}': give each stage its own name")
        names.add(stage.name)
        stages.append(Stage(stage.name, stage.init, compose([*job_overrides, *stage.overrides, "stages=[]"])))
    return stages


def validate(stages: list[Stage]) -> None:
    """Check every stage's composition and data before any stage runs."""
    from tessera.core.pipeline import prepare

    for stage in stages:
        prepare(stage.cfg, run_dir=None, check_model=stage.init == "base")


def run(stages: list[Stage], run_dir: Path) -> dict:
    """Run the stages in order; return ``{stage name: test metrics}`` (also written to the run's files)."""
    from tessera.core.pipeline import run_single

    results, previous = {}, None
    write_json(run_dir / "run.json", {"status": "running", "stages": [stage.name for stage in stages]})
    for stage in stages:
        cfg = stage.cfg
        if stage.init == "previous":
            cfg = OmegaConf.merge(cfg, {"model": {"pretrained": str(previous / "export"), "random_init": False}})
        stage_dir = run_dir / "stages" / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_text(stage_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        results[stage.name] = run_single(cfg, stage_dir, check_model=stage.init == "base")
        previous = stage_dir
    write_json(run_dir / "metrics.json", {"stages": results})
    write_text(run_dir / "report.md", comparison(results))
    write_json(run_dir / "run.json", {"status": "complete", "stages": results})
    return results


def comparison(results: dict[str, dict]) -> str:
    """A Markdown table of the stages' scalar test metrics, one column per stage."""
    keys = [key for key in dict.fromkeys(k for metrics in results.values() for k in metrics)
            if all(isinstance(m.get(key), (int, float)) or m.get(key) is None for m in results.values())]
    lines = ["# tessera multi-stage report", "", "| metric | " + " | ".join(results) + " |",
             "|---|" + "---|" * len(results)]
    for key in keys:
        cells = [results[name].get(key) for name in results]
        lines.append(f"| {key} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
