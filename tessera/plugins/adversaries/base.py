"""What the built-in adversaries share: the forward hook on the input embeddings, the per-example L2 helpers, the
perturbation configs and :class:`EmbeddingAdversary`.

Every adversary perturbs the output of the model's input-embedding module (found with
``model.get_input_embeddings()``, which sees through PEFT wrappers, so LoRA and any other adapter compose) through a
forward hook, per example, never on padding, and restores it afterwards. Any objective composes: the
adversaries only call the step's loss. The hook also records the gradient at the clean point during the trainer's
own forward pass, so the first ascent step costs nothing extra (except on the very first step of a run).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.techniques import Adversary, TechniqueConfig

#: Zero perturbations recorded in the trainer's clean forwards are kept for at most this many forwards.
_MAX_RECORDED = 4


class EmbeddingPerturbation:
    """A forward hook on the input-embedding module. With :meth:`perturbed` it adds a perturbation to the
    embedding output; otherwise, in a training forward with gradients on, it adds a zero tensor that records the
    gradient of the loss with respect to the embeddings."""

    def __init__(self, model):
        self.module = model.get_input_embeddings()
        self.delta = None
        self.recorded: list = []
        self.handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        import torch

        if self.delta is not None:
            return output + self.delta.to(output.dtype) if self.delta.shape == output.shape else output
        if module.training and torch.is_grad_enabled():
            zero = torch.zeros_like(output, requires_grad=True)
            self.recorded = [*self.recorded[-(_MAX_RECORDED - 1) :], zero]
            return output + zero
        return output

    @contextmanager
    def perturbed(self, delta):
        """Add ``delta`` (shaped like the embedding output) to every forward inside the block, then restore."""
        self.delta = delta
        try:
            yield
        finally:
            self.delta = None

    def clean_gradient(self, shape):
        """The gradient recorded in the last clean forward, if exactly one forward of ``shape`` recorded one."""
        found = [zero.grad for zero in self.recorded if zero.shape == shape and zero.grad is not None]
        self.recorded = []
        return found[0] if len(found) == 1 else None

    def remove(self) -> None:
        """Take the hook off the model."""
        self.handle.remove()


def token_mask(batch, like):
    """The attention mask as a ``[batch, length, 1]`` float tensor (all ones when the batch has none)."""
    import torch

    mask = batch.get("attention_mask")
    if mask is None or mask.shape != like.shape[:2]:
        return torch.ones(like.shape[:2] + (1,), dtype=like.dtype, device=like.device)
    return mask.unsqueeze(-1).to(like.dtype)


def _per_example_norm(tensor):
    return tensor.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (tensor.dim() - 1)))


def normalized(gradient, mask):
    """``gradient`` without padding, scaled to unit L2 norm per example (NaN and inf from fp16 zeroed)."""
    import torch

    gradient = torch.nan_to_num(gradient.detach().float(), nan=0.0, posinf=0.0, neginf=0.0) * mask
    return gradient / _per_example_norm(gradient)


def projected(delta, epsilon: float):
    """``delta`` moved into the L2 ball of radius ``epsilon`` per example (unchanged when ``epsilon`` is 0)."""
    if epsilon <= 0:
        return delta
    return delta * (epsilon / _per_example_norm(delta)).clamp(max=1.0)


@dataclass
class PerturbationConfig(TechniqueConfig):
    """Size of the embedding perturbation."""

    #: Radius of the perturbation (L2 norm per example, over all its tokens' embeddings). A MiniLM / BERT word
    #: embedding has a norm of about 1: with LoRA, fgm at 0.2 or 1.0 kept the model from learning, 0.05 did not.
    epsilon: float = 0.05


@dataclass
class MultiStepConfig(PerturbationConfig):
    """A perturbation found in several ascent steps."""

    step_size: float = 0.02
    steps: int = 3


class EmbeddingAdversary(Adversary):
    """Shared by the built-in adversaries: the hook on the embeddings, the clean gradient, the config checks."""

    Config = PerturbationConfig

    def __init__(self, config):
        super().__init__(config)
        self.hook: EmbeddingPerturbation | None = None
        #: The trainer divides each loss by the gradient-accumulation steps; a loss built here must be too.
        self.loss_scale = 1.0

    def validate(self, composition) -> None:
        config, prefix = self.config, f"adversary.{self.name}"
        if config.epsilon < 0 or (config.epsilon == 0 and self.name != "freelb"):
            raise ConfigError(f"{prefix}.epsilon={config.epsilon}: set a positive perturbation radius")
        if getattr(config, "steps", 1) < 1:
            raise ConfigError(f"{prefix}.steps={config.steps}: set 1 or more ascent steps")
        if getattr(config, "step_size", 1.0) <= 0:
            raise ConfigError(f"{prefix}.step_size={config.step_size}: set a positive step size")

    @hookimpl
    def tessera_run_start(self, run):
        self.loss_scale = 1.0 / run.cfg.trainer.gradient_accumulation_steps

    @hookimpl
    def tessera_run_end(self, run, status, metrics):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def _embedding_hook(self, step) -> EmbeddingPerturbation:
        if self.hook is None:
            self.hook = EmbeddingPerturbation(step.accelerator.unwrap_model(step.model))
        return self.hook

    def _zero(self, step):
        """A zero perturbation shaped like the embedding output of ``step.batch``."""
        import torch

        weight = self._embedding_hook(step).module.weight
        return torch.zeros(*step.batch["input_ids"].shape, weight.shape[-1], device=weight.device)

    def _gradient_at(self, step, delta):
        """The gradient of the step's loss with respect to the perturbation ``delta`` (parameters untouched)."""
        import torch

        leaf = delta.detach().requires_grad_(True)
        with self._embedding_hook(step).perturbed(leaf):
            loss = step.compute_loss(step.batch)
        return torch.autograd.grad(loss, leaf)[0]

    def _clean_gradient(self, step, like):
        """The gradient at the clean point: recorded by the hook in the trainer's forward when it could be, else
        computed with one more forward and backward (the first step of a run)."""
        found = self._embedding_hook(step).clean_gradient(like.shape)
        return found if found is not None else self._gradient_at(step, like)

    def _adversarial_backward(self, step, delta, weight: float = 1.0) -> object:
        """Back-propagate the loss at ``delta`` (times ``weight``) into the parameters; return its gradient
        with respect to ``delta``."""
        leaf = delta.detach().requires_grad_(True)
        with self._embedding_hook(step).perturbed(leaf):
            loss = step.compute_loss(step.batch) * weight
        step.backward(loss)
        return leaf.grad
