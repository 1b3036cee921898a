"""Ensemble stages: a stage that trains nothing and combines the exports of its members.

The members are the ensembler's ``members`` (earlier stages of the job, run directories or Hugging Face model
directories; every earlier stage when the list is empty), checked before any work: all must predict the same labels,
and a weight-space ensembler needs the same architecture and tokenizer. A :class:`~tessera.core.techniques.WeightMerger`
merges their state dicts into one model that is evaluated, compressed (``compress=...`` still applies) and
exported like a trained one; an :class:`~tessera.core.techniques.OutputCombiner` is fitted on the members'
validation probabilities, combines their test probabilities, and exports ``ensemble.json`` with a copy of each
member (``export/members/<name>/``), which ``tessera serve`` and ``tessera predict`` run. Either way the members'
own test metrics, measured here on the same test split, are written beside the ensemble's.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.run import Composition, Run

log = logging.getLogger("tessera")

#: The file that describes an output-space ensemble's export.
ENSEMBLE_FILE = "ensemble.json"
#: The config keys that must agree for members to be merged in weight space.
ARCHITECTURE_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


@dataclass(frozen=True)
class Member:
    """One member: its name (the stage's, or the directory's), what named it, and its model directory (None while
    an earlier stage of the job has not run)."""

    name: str
    reference: str
    export: Path | None

    def config(self) -> dict:
        """The member's ``config.json``."""
        return json.loads((self.export / "config.json").read_text(encoding="utf-8"))

    def labels(self) -> list[str] | None:
        """The class names of a classifier member, in index order; None for other models."""
        names = self.config().get("id2label")
        if not names or not any(
            a.endswith("ForSequenceClassification") for a in self.config().get("architectures", [])
        ):
            return None
        return [names[key] for key in sorted(names, key=int)]


@dataclass
class EnsembleContext:
    """What an ensembler works with besides its inputs: the run, the members and their normalised weights."""

    run: Run
    members: list[Member]
    weights: list[float]
    #: ``validate(state_dict) -> metrics`` evaluates a candidate merged model on the validation split (greedy soup).
    validate: object = None


def members_of(ensembler, composition: Composition) -> list[Member]:
    """The ensembler's members, resolved (their directories are checked where they exist)."""
    label = f"{ensembler.label}: members"
    entries = list(ensembler.config.members) or list(composition.earlier_stages)
    if len(entries) < 2:
        raise ConfigError(
            f"{ensembler.label} needs at least two members and has {len(entries)}: list them "
            f"(ensemble.{ensembler.name}.members=[RUN_DIR,RUN_DIR]) or put the ensemble stage after member stages"
        )
    members = []
    for entry in entries:
        if entry not in composition.earlier_stages:
            refuse_unusable_directory(label, Path(str(entry)).expanduser(), composition)
        export = composition.model_directory(str(entry), label)
        name = entry if entry in composition.earlier_stages else Path(entry).expanduser().resolve().name
        if name in {m.name for m in members}:
            name = f"{name}-{len(members)}"
        members.append(Member(name, str(entry), export))
    weights = ensembler.config.weights
    if weights is not None and len(weights) != len(members):
        raise ConfigError(
            f"{ensembler.label}: {len(weights)} weights for {len(members)} members: give one weight per member"
        )
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ConfigError(f"{ensembler.label}: weights {list(weights)} must be non-negative with a positive sum")
    return members


def refuse_unusable_directory(label: str, path: Path, composition: Composition) -> None:
    """Refuse, in one line, a member directory that does not exist, is a multi-stage job (its stages are the
    models), or is a run that did not complete (its ``run.json``, or the run's when ``path`` is its ``export/``)."""
    if not path.exists():
        stages = ", ".join(composition.earlier_stages) or "none"
        raise ConfigError(
            f"{label}={path} is neither an earlier stage of this job (earlier stages: {stages}) nor an existing "
            "directory: give a run, export or model directory"
        )
    stages = sorted(p.name for p in (path / "stages").glob("*") if (p / "export").is_dir())
    if stages and not (path / "export").is_dir():
        raise ConfigError(
            f"{label}={path} is a job of several stages ({', '.join(stages)}): give its stage directories "
            f"({path / 'stages' / stages[0]} ...)"
        )
    for status in (path / "run.json", path.parent / "run.json" if path.name == "export" else None):
        if status is not None and status.is_file():
            state = json.loads(status.read_text(encoding="utf-8")).get("status")
            if state != "complete":
                raise ConfigError(
                    f"{label}={path} is a run that did not complete (status: {state}): finish it (resume=true) "
                    "or leave it out"
                )
            return


def check_members(ensembler, members: list[Member]) -> None:
    """Refuse members that cannot be combined, in one line naming two of them and what differs: another label set
    or tokenizer (the stage tokenizes once for all members), and for weight-space merging another architecture."""
    from tessera.core.models import vocabulary

    present = [m for m in members if m.export is not None]
    for first, other in zip(present, present[1:]):
        if first.labels() != other.labels():
            raise IncompatibleError(
                f"member {first.name}",
                f"member {other.name}",
                f"they predict different labels ({first.labels()} and {other.labels()})",
            )
        if vocabulary(first.export) != vocabulary(other.export):
            raise IncompatibleError(
                f"member {first.name}",
                f"member {other.name}",
                "their tokenizers differ: "
                + (
                    "merge models of one base"
                    if ensembler.space == "weights"
                    else "every member is fed the same tokens, so combine models of one tokenizer"
                ),
            )
        if ensembler.space != "weights":
            continue
        for key in ARCHITECTURE_KEYS:
            if first.config().get(key) != other.config().get(key):
                raise IncompatibleError(
                    f"member {first.name}",
                    f"member {other.name}",
                    f"{ensembler.name} merges weights of one architecture, and their {key} differs "
                    f"({first.config().get(key)} and {other.config().get(key)})",
                )


def validate_ensemble(ensembler, composition: Composition) -> None:
    """The checks of an ensemble stage before any work (called from each ensembler's ``validate``)."""
    from tessera.core.techniques import CONFIG_FAMILIES

    trained = [
        f
        for f in CONFIG_FAMILIES
        if f not in ("objective", "ensemble", "compress", "logger") and composition.selected(f)
    ]
    if trained:
        family = trained[0]
        raise IncompatibleError(
            ensembler.label,
            f"{family}={composition.selected(family)[0].name}",
            f"an ensemble stage trains nothing: set {family}=none",
        )
    if len(composition.selected("ensemble")) > 1:
        raise IncompatibleError(
            ensembler.label, composition.selected("ensemble")[1].label, "a stage has at most one ensembler"
        )
    if ensembler.space == "outputs" and composition.task != "sequence-classification":
        raise IncompatibleError(ensembler.label, f"the {composition.task} task", "it combines class probabilities")
    check_members(ensembler, members_of(ensembler, composition))


def normalised(weights, count: int) -> list[float]:
    """``weights`` scaled to sum to 1 (equal weights when None)."""
    weights = list(weights) if weights is not None else [1.0] * count
    total = sum(weights)
    return [w / total for w in weights]


def _load_member(member: Member, task: str):
    import torch
    import transformers

    from tessera.core.models import AUTO_CLASSES

    transformers.logging.set_verbosity_error()
    return getattr(transformers, AUTO_CLASSES[task]).from_pretrained(member.export, dtype=torch.float32).eval()


def ensemble_stage(run: Run, splits, timings: dict) -> tuple[dict, dict]:
    """Combine the members; evaluate the ensemble and each member on the test split; export. Returns the ensemble's
    test metrics and the rest of ``metrics.json`` (``ensemble``: the method and each member's test metrics)."""
    from tessera.core.evaluate import evaluate_objectives
    from tessera.core.max_length import resolve_max_length
    from tessera.core.models import load_tokenizer
    from tessera.core.pipeline import phase

    ensembler = run.composition.selected("ensemble")[0]
    members = members_of(ensembler, run.composition)
    check_members(ensembler, members)
    task = run.composition.task
    validation, test = splits.validation, splits.test
    resolve_max_length(run, splits.train)
    tokenizer = load_tokenizer(run.cfg.model)
    context = EnsembleContext(run, members, normalised(ensembler.config.weights, len(members)))
    with phase("members", timings):
        member_metrics, probabilities = {}, {"validation": [], "test": []}
        for member in members:  # each member loaded once: its test metrics, and its probabilities for a combiner
            model = _load_member(member, task)
            member_metrics[member.name] = evaluate_objectives(run, model, tokenizer, test, "member")
            if ensembler.space == "outputs":
                for split, examples in (("validation", validation), ("test", test)):
                    probabilities[split].append(member_probabilities(run, model, tokenizer, examples))
    record = {
        "ensemble": {
            "method": ensembler.name,
            "space": ensembler.space,
            "weights": context.weights,
            "members": {m.name: {"path": str(m.export), "test": member_metrics[m.name]} for m in members},
        }
    }
    if ensembler.space == "weights":
        from tessera.core.pipeline import export_model

        with phase("merge_members", timings):
            model = merge_members(ensembler, members, run, context, tokenizer, validation)
        if ensembler.details():
            record["ensemble"]["details"] = ensembler.details()
        with phase("evaluate", timings):
            metrics = evaluate_objectives(run, model, tokenizer, test, "test")
            run.events.evaluation("test", metrics)
        items = run.composition.item_builder.items(
            splits.train, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed
        )
        metrics, compression = export_model(
            run, model, tokenizer, items, test, metrics, timings, drift_data=(splits.train, validation)
        )
        if not run.composition.selected("compress"):
            ensembler.write_unmerged(run.dir / "export")
        return metrics, {**compression, **record}
    with phase("combine", timings):
        metrics = combine_outputs(ensembler, run, probabilities, context.weights, validation, test)
        run.events.evaluation("test", metrics)
    with phase("export", timings):
        export_outputs(run, ensembler, members, tokenizer, metrics, member_metrics)
    return metrics, record


def merge_members(ensembler, members: list[Member], run: Run, context: EnsembleContext, tokenizer, validation):
    """The members merged by a weight-space ensembler, as a model of the first member's class; the base of the task
    vectors is the stage's model (``model.pretrained``), the members' common starting point."""
    from tessera.core.evaluate import evaluate_objectives
    from tessera.core.models import load_model

    task = run.composition.task
    model = _load_member(members[0], task)
    states = [{k: v.float().clone() for k, v in model.state_dict().items()}]  # validate() loads into model
    states += [{k: v.float() for k, v in _load_member(m, task).state_dict().items()} for m in members[1:]]
    base_model = load_model(run.cfg.model, task, run.state.get("labels") or [], tokenizer, run.cfg.trainer.seed)
    base = {
        k: v.float() for k, v in base_model.state_dict().items() if k in states[0] and v.shape == states[0][k].shape
    }

    def validate(state: dict) -> dict:
        model.load_state_dict(state)
        return evaluate_objectives(run, model, tokenizer, validation, "validation")

    context.validate = validate
    merged = ensembler.merge(states, base, context)
    model.load_state_dict({k: v.to(states[0][k].dtype) for k, v in merged.items()})
    return model.eval()


def member_probabilities(run: Run, model, tokenizer, examples: list[dict]):
    """A member's class probabilities on ``examples`` (a ``[examples, classes]`` numpy array)."""
    from tessera.core.evaluate import predict_probabilities

    items = run.composition.item_builder.items(examples, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed)
    return predict_probabilities(run, model, tokenizer, items)


def combine_outputs(ensembler, run: Run, probabilities: dict, weights: list[float], validation, test) -> dict:
    """Fit the output combiner on the members' validation probabilities (``probabilities["validation"]``, one array
    per member), combine their test probabilities with the normalised ``weights``, and report the result."""
    import numpy as np

    from tessera.core.evaluate import classification_report

    ensembler.fit(probabilities["validation"], np.asarray([e["label"] for e in validation]))
    return classification_report(run, test, ensembler.combine(probabilities["test"], weights), "test")


def export_outputs(run: Run, ensembler, members: list[Member], tokenizer, metrics: dict, member_metrics: dict) -> Path:
    """Write ``export/``: ``ensemble.json``, a copy of each member under ``members/<name>/``, the tokenizer and a
    model card."""
    from tessera.core.files import atomic_directory

    target = run.dir / "export"
    with atomic_directory(target, owned=True) as partial:
        for member in members:
            shutil.copytree(member.export, partial / "members" / member.name)
        tokenizer.save_pretrained(partial)
        description = {
            "method": ensembler.name,
            "space": ensembler.space,
            "labels": run.state["labels"],
            "max_length": run.cfg.data.max_length,
            "members": [{"name": m.name, "path": f"members/{m.name}"} for m in members],
            "weights": normalised(ensembler.config.weights, len(members)),
            "state": ensembler.state(),
        }
        (partial / ENSEMBLE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        (partial / "README.md").write_text(ensemble_card(run, description, metrics, member_metrics), encoding="utf-8")
    run.events.export(target)
    return target


def ensemble_card(run: Run, description: dict, metrics: dict, member_metrics: dict) -> str:
    """The model card of an output-space ensemble: the method, the members and the test metrics side by side."""
    keys = [k for k, v in metrics.items() if isinstance(v, float)]
    names = list(member_metrics)
    lines = [
        "---",
        "tags: [tessera, ensemble]",
        "---",
        "",
        f"# {description['method']} ensemble of {len(names)} models by tessera on {run.cfg.data.name}",
        "",
        f"Labels: {', '.join(description['labels'])}. Members (weights): "
        + ", ".join(f"`{name}` ({w:.3g})" for name, w in zip(names, description["weights"]))
        + ". Each member is a Hugging Face model under `members/<name>/`; `ensemble.json` says how they combine.",
        "",
        "## Test metrics",
        "",
        "| metric | ensemble | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
        *[
            f"| {k} | {metrics[k]:.4f} | "
            + " | ".join(f"{member_metrics[n].get(k, float('nan')):.4f}" for n in names)
            + " |"
            for k in keys
        ],
        "",
        "## Use",
        "",
        "```",
        "tessera serve <run directory>     # /classify answers with the combined probabilities",
        "tessera predict <run directory> texts.txt",
        "```",
    ]
    return "\n".join(lines) + "\n"
