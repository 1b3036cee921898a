"""Built-in adversaries (family ``adversary``): adversarial training in the word-embedding space.

``fgm``
    Fast Gradient Method (Miyato, Dai & Goodfellow 2017): one step of size ``epsilon`` along the L2-normalised
    gradient of the loss; the clean and the adversarial gradients are summed. 2 forward/backward passes.
``pgd``
    Projected Gradient Descent (Madry et al. 2018): ``steps`` ascent steps of size ``step_size``, each projected
    back into the L2 ball of radius ``epsilon``; the intermediate steps only move the perturbation, the clean and
    the last adversarial gradients are summed. ``steps + 1`` passes.
``freelb``
    FreeLB (Zhu et al. 2020): ``steps`` passes along the ascent path starting at the clean point (zero
    initialisation), each loss divided by ``steps`` and its gradient accumulated, so the parameters are trained
    on the average of all of them; projection onto ``epsilon`` (0: unbounded). ``steps`` passes.
``vat``
    Virtual Adversarial Training (Miyato et al. 2017): the KL divergence between the predictions on the clean
    and on a virtually adversarial input (found by ``power_iterations`` of power iteration from a random
    direction of size ``xi``) is added with ``weight``; it needs no labels. 3 passes plus one forward.

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


def _mask(batch, like):
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


class Fgm(EmbeddingAdversary):
    """Fast Gradient Method on the word embeddings (Miyato et al. 2017)."""

    name = "fgm"

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        step.backward(loss)
        zero = self._zero(step)
        mask = _mask(step.batch, zero)
        delta = self.config.epsilon * normalized(self._clean_gradient(step, zero), mask)
        self._adversarial_backward(step, delta)


class Pgd(EmbeddingAdversary):
    """K-step projected gradient ascent on the word embeddings (Madry et al. 2018)."""

    name = "pgd"
    Config = MultiStepConfig

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        step.backward(loss)
        delta = self._zero(step)
        mask = _mask(step.batch, delta)
        gradient = self._clean_gradient(step, delta)
        for ascent in range(self.config.steps):
            delta = projected(delta + self.config.step_size * normalized(gradient, mask), self.config.epsilon)
            if ascent + 1 < self.config.steps:
                gradient = self._gradient_at(step, delta)
        self._adversarial_backward(step, delta)


class FreeLB(EmbeddingAdversary):
    """Free Large-Batch adversarial training (Zhu et al. 2020): gradients accumulated along the ascent path."""

    name = "freelb"
    Config = MultiStepConfig

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        share = 1.0 / self.config.steps
        step.backward(loss * share)
        delta = self._zero(step)
        mask = _mask(step.batch, delta)
        gradient = self._clean_gradient(step, delta)
        for _ in range(self.config.steps - 1):
            delta = projected(delta + self.config.step_size * normalized(gradient, mask), self.config.epsilon)
            gradient = self._adversarial_backward(step, delta, share)


@dataclass
class VatConfig(PerturbationConfig):
    """Virtual adversarial training: the regulariser's weight and the power iteration."""

    weight: float = 1.0
    #: Size of the random probe of the power iteration.
    xi: float = 1e-3
    power_iterations: int = 1


class Vat(EmbeddingAdversary):
    """Virtual Adversarial Training (Miyato et al. 2017): a label-free smoothness term on the model's outputs."""

    name = "vat"
    Config = VatConfig

    def validate(self, composition) -> None:
        super().validate(composition)
        if self.config.power_iterations < 1 or self.config.xi <= 0:
            raise ConfigError("adversary.vat needs power_iterations >= 1 and xi > 0")

    @staticmethod
    def _logits(step):
        from tessera.core.batching import model_inputs

        return step.model(**model_inputs(step.batch)).logits.float()

    @staticmethod
    def _divergence(clean_logits, logits, mask):
        """KL(clean || perturbed) over the last axis, averaged over the examples (and their real tokens)."""
        import torch.nn.functional as F

        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(clean_logits, -1), log_target=True, reduction="none")
        kl = kl.sum(-1)
        if kl.dim() == 2:  # token-level outputs: ignore padding
            weights = mask.squeeze(-1)
            return (kl * weights).sum() / weights.sum().clamp_min(1.0)
        return kl.mean()

    def backward(self, step, loss) -> None:
        import torch

        hook = self._embedding_hook(step)
        step.backward(loss)
        hook.recorded = []
        zero = self._zero(step)
        mask = _mask(step.batch, zero)
        with torch.no_grad():
            clean = self._logits(step)
        direction = normalized(torch.randn_like(zero), mask)
        for _ in range(self.config.power_iterations):
            probe = (self.config.xi * direction).requires_grad_(True)
            with hook.perturbed(probe):
                divergence = self._divergence(clean, self._logits(step), mask)
            direction = normalized(torch.autograd.grad(divergence, probe)[0], mask)
        with hook.perturbed(self.config.epsilon * direction):
            regulariser = self._divergence(clean, self._logits(step), mask)
        step.backward(regulariser * self.config.weight * self.loss_scale)


@hookimpl
def tessera_adversaries():
    return [Fgm, Pgd, FreeLB, Vat]
