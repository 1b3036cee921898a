"""``distill``: knowledge distillation (Hinton et al., 2015) into the stage's model, the student.

The student learns from a frozen teacher's softened logits beside its task loss:
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss``, and optionally
matches the teacher's hidden states (``hidden_weight``, a masked MSE at uniformly mapped layers, as TinyBERT;
only when the hidden sizes match). The student is the stage's model: with ``layers: N`` it keeps N of its layers
spread from the first (DistilBERT's every other layer: MiniLM 6 -> 3 keeps 0, 2, 4) before the adapters are
applied, or it is any smaller model with the teacher's tokenizer (``model.pretrained``). The teacher is an earlier
stage of the job (its export) or a Hugging Face model directory. Sequence classification and causal LM (token
logits) are distilled; the export is a plain, smaller Hugging Face model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import keep_layers, layer_list, spread

#: The tasks whose logits are distilled, and the class name ending of a teacher with that head.
TEACHER_HEADS = {"sequence-classification": "ForSequenceClassification", "causal-lm": "ForCausalLM"}


@dataclass
class DistillConfig(TechniqueConfig):
    """The teacher, the softening and the weights of the distillation terms, and the student's layer count."""

    #: The name of an earlier stage of the job (its export) or a Hugging Face model directory.
    teacher: str | None = None
    #: The softmax temperature of both models' logits in the KD term.
    temperature: float = 2.0
    #: The weight of the KD term; the task loss has ``1 - alpha``.
    alpha: float = 0.5
    #: Keep this many of the student's layers at init, spread from the first; null keeps them all.
    layers: int | None = None
    #: The weight of the hidden-state MSE (0: logits only); needs equal hidden sizes.
    hidden_weight: float = 0.0


def distillation_loss(student_logits, teacher_logits, temperature: float, mask=None):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` in float32, averaged over the rows of the logits
    (examples, or the token positions where ``mask`` is true); the teacher's side carries no gradient."""
    import torch.nn.functional as F

    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_row = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    if mask is not None:
        per_row = per_row[mask]
    return per_row.mean() * temperature**2 if per_row.numel() else per_row.sum()


def hidden_state_loss(student_states, teacher_states, attention_mask):
    """The mean squared error between student and teacher hidden states (pairs of ``[batch, length, hidden]``) over
    the tokens of ``attention_mask``, in float32, averaged over the pairs."""
    mask = attention_mask.unsqueeze(-1).float()
    losses = [
        (((student.float() - teacher.detach().float()) ** 2) * mask).sum() / (mask.sum() * student.shape[-1])
        for student, teacher in zip(student_states, teacher_states)
    ]
    return sum(losses) / len(losses)


def layer_mapping(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer whose output each student layer's output matches, uniformly (TinyBERT): the student's
    last layer matches the teacher's last (``layer_mapping(3, 6) == [1, 3, 5]``, 0-based)."""
    return [(position + 1) * teacher_layers // student_layers - 1 for position in range(student_layers)]


class LayerOutputs:
    """The output of each transformer layer of a model in its latest forward pass (only in training passes with
    ``training_only``), recorded by forward hooks: the layers' own outputs, before any final norm."""

    def __init__(self, model, training_only: bool):
        self.training_only = training_only
        self.outputs: dict[int, object] = {}
        for position, layer in enumerate(layer_list(model)):
            layer.register_forward_hook(functools.partial(self._record, position))

    def _record(self, position: int, module, inputs, output) -> None:
        if module.training or not self.training_only:
            self.outputs[position] = output[0] if isinstance(output, tuple) else output

    def take(self) -> list:
        """The recorded outputs in layer order, forgotten afterwards."""
        found = [self.outputs[position] for position in sorted(self.outputs)]
        self.outputs.clear()
        return found


@functools.cache
def _vocabulary(directory: str) -> tuple:
    from transformers import AutoTokenizer

    return tuple(sorted(AutoTokenizer.from_pretrained(directory).get_vocab().items()))


def _model_dir(pretrained: str) -> Path:
    from tessera.core.models import pretrained_path

    return pretrained_path(OmegaConf.create({"pretrained": pretrained}))


def _config(directory: Path, overrides: dict | None = None):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory, **(overrides or {}))


class Distill(Compressor):
    """Trains the stage's model (optionally cut to ``layers`` layers) on a frozen teacher's soft targets."""

    name = "distill"
    Config = DistillConfig

    def __init__(self, config):
        super().__init__(config)
        self.run = self.teacher = self.task = None
        #: The layer outputs of both models, for hidden-state matching.
        self.student_states = self.teacher_states = None

    # --- validation ----------------------------------------------------------------------------------------

    def validate(self, composition):
        config = self.config
        task = composition.task
        if task not in TEACHER_HEADS:
            raise IncompatibleError(
                self.label, f"the {task} task", "it distils sequence-classification or causal-lm logits"
            )
        if not config.teacher:
            raise ConfigError(
                f"{self.label} needs a teacher: compress.distill.teacher=STAGE (an earlier stage) or a model directory"
            )
        if config.temperature <= 0:
            raise ConfigError(f"{self.label}: temperature={config.temperature} must be positive")
        if not 0.0 <= config.alpha <= 1.0:
            raise ConfigError(f"{self.label}: alpha={config.alpha} is outside [0, 1]")
        if config.hidden_weight < 0:
            raise ConfigError(f"{self.label}: hidden_weight={config.hidden_weight} must not be negative")
        student = self._student_config(composition.cfg.model)
        if config.layers is not None and not 1 <= config.layers <= student.num_hidden_layers:
            raise ConfigError(
                f"{self.label}: layers={config.layers} but model={composition.cfg.model.name} has "
                f"{student.num_hidden_layers} layers: keep between 1 and {student.num_hidden_layers}"
            )
        teacher_dir = self._teacher_dir(composition)
        student_source = composition.cfg.model.pretrained
        if teacher_dir is None:  # an earlier stage not trained yet: its tokenizer is its base model's
            self._check_tokenizers(composition.earlier_bases.get(config.teacher), student_source)
            return
        self._check_tokenizers(str(teacher_dir), student_source)
        teacher = _config(teacher_dir)
        head = TEACHER_HEADS[task]
        if not any(name.endswith(head) for name in teacher.architectures or []):
            raise ConfigError(
                f"{self.label}: the teacher {config.teacher} is a {', '.join(teacher.architectures or ['headless'])}, "
                f"not a *{head} model: distil from a model trained for {task}"
            )
        if config.hidden_weight and teacher.hidden_size != student.hidden_size:
            raise IncompatibleError(
                f"{self.label} hidden_weight={config.hidden_weight}",
                f"model={composition.cfg.model.name}",
                f"the teacher's hidden size is {teacher.hidden_size} and the student's {student.hidden_size}: "
                "set hidden_weight=0 (logits only)",
            )
        if task == "sequence-classification" and composition.cfg.data.labels:
            self._check_labels(teacher, list(composition.cfg.data.labels))

    def _teacher_dir(self, composition) -> Path | None:
        """The teacher's model directory; None for an earlier stage whose export does not exist yet."""
        name = self.config.teacher
        if name in composition.earlier_stages:
            export = composition.earlier_stages[name]
            return export if export is not None and (export / "config.json").is_file() else None
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            stages = ", ".join(composition.earlier_stages) or "none"
            raise ConfigError(
                f"{self.label}: teacher={name} is neither an earlier stage of this job (earlier stages: {stages}) "
                "nor a Hugging Face model directory (no config.json)"
            )
        return path

    def _check_tokenizers(self, teacher_source: str | None, student_source: str) -> None:
        if teacher_source is None or teacher_source == student_source:
            return
        teacher_dir = teacher_source if Path(teacher_source).is_dir() else str(_model_dir(teacher_source))
        if _vocabulary(teacher_dir) != _vocabulary(str(_model_dir(student_source))):
            raise ConfigError(
                f"{self.label}: the teacher {self.config.teacher} has another tokenizer than "
                f"model.pretrained={student_source} (their vocabularies differ): distil into a model of the "
                "teacher's tokenizer"
            )

    def _check_labels(self, teacher, labels: list[str]) -> None:
        teacher_labels = [teacher.id2label[index] for index in sorted(teacher.id2label)]
        if teacher_labels != labels:
            raise ConfigError(
                f"{self.label}: the teacher {self.config.teacher} predicts the labels {', '.join(teacher_labels)} "
                f"and the data has {', '.join(labels)}: distil from a teacher of the same label set"
            )

    @staticmethod
    def _student_config(model_cfg):
        from tessera.core.models import pretrained_path

        overrides = dict(model_cfg.config_overrides) if model_cfg.random_init else {}
        return _config(pretrained_path(model_cfg), overrides)

    # --- training ------------------------------------------------------------------------------------------

    def prepare(self, model, run):
        """Cut the student to ``layers`` layers, load the frozen teacher (checking its labels against the data's,
        known now) and, for hidden-state matching, listen to the student's layer outputs."""
        import torch
        import transformers

        from tessera.core.models import AUTO_CLASSES

        self.run, self.task = run, run.composition.task
        teacher_dir = self._teacher_dir(run.composition)
        if teacher_dir is None:
            raise ConfigError(f"{self.label}: the teacher stage {self.config.teacher} has no export: run it first")
        teacher_config = _config(teacher_dir)
        if self.task == "sequence-classification":
            self._check_labels(teacher_config, list(run.state["labels"]))
        if self.config.layers is not None:
            keep_layers(model, spread(self.config.layers, len(layer_list(model))))
        if self.config.hidden_weight:
            if teacher_config.hidden_size != model.config.hidden_size:
                raise IncompatibleError(
                    f"{self.label} hidden_weight={self.config.hidden_weight}",
                    f"the teacher {self.config.teacher}",
                    f"the teacher's hidden size is {teacher_config.hidden_size} and the student's "
                    f"{model.config.hidden_size}: set hidden_weight=0 (logits only)",
                )
            self.student_states = LayerOutputs(model, training_only=True)
        transformers.logging.set_verbosity_error()
        auto_class = getattr(transformers, AUTO_CLASSES[self.task])
        self.teacher = auto_class.from_pretrained(teacher_dir, dtype=torch.float32).eval().requires_grad_(False)
        if self.config.hidden_weight:
            self.teacher_states = LayerOutputs(self.teacher, training_only=False)
        return model

    def training_loss(self, loss, outputs, batch):
        """``alpha * KD + (1 - alpha) * loss`` (+ ``hidden_weight`` * hidden-state MSE), the KD term in float32."""
        import torch

        from tessera.core.batching import IGNORE_INDEX, model_inputs
        from tessera.core.trainer import resolve_device

        student_logits = outputs.logits
        device = student_logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        _, precision = resolve_device(self.run.cfg.trainer)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            teacher = self.teacher(**model_inputs(batch))
        mask = None
        if self.task == "causal-lm":  # the positions whose next token is a target
            targets = batch.get("lm_labels")
            mask = batch["attention_mask"].bool() if targets is None else targets != IGNORE_INDEX
            mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        kd = distillation_loss(student_logits, teacher.logits, self.config.temperature, mask)
        total = self.config.alpha * kd + (1 - self.config.alpha) * loss
        if self.config.hidden_weight:
            student_states, teacher_states = self.student_states.take(), self.teacher_states.take()
            matched = [teacher_states[index] for index in layer_mapping(len(student_states), len(teacher_states))]
            hidden = hidden_state_loss(student_states, matched, batch["attention_mask"])
            total = total + self.config.hidden_weight * hidden
        return total
