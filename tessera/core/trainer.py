"""tessera's training loop on accelerate, with named seams where techniques act.

Seams, in the order of a step: **loss** (the objectives, weighted, then the compressors' ``training_loss``), **backward** (the adversary when one is
selected, else a plain backward), **before the optimizer step** (gradient clipping, then the
``tessera_before_optimizer_step`` event), **step end** (the ``tessera_step_end`` event, then a checkpoint when due).
A checkpoint holds the trainable weights, the optimizer, the schedule, the RNG states and the position in the
epoch, so ``resume=true`` continues a killed run to the same result as an uninterrupted one.

The checkpoint format and its atomic writes are in :mod:`tessera.core.checkpoints`. While it trains, the model
runs with the speed-ups that ``trainer.fast_dropout`` and ``trainer.fused_lora`` select
(:mod:`tessera.core.speedups`); they are undone before the model is returned. The loss is read back from the device
once per optimizer step, not once per batch.

On several processes (``trainer.processes``, :mod:`tessera.core.distributed`) accelerate wraps the model in DDP (or
FSDP); each rank trains on its share of every step's batch, rank 0 alone validates and writes the checkpoints, and
every rank resumes from the same one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tessera.core import checkpoints, distributed
from tessera.core.batching import batch_order, collate, model_inputs
from tessera.core.errors import ConfigError
from tessera.core.run import Run
from tessera.core.speedups import training_speedups

log = logging.getLogger("tessera")


@dataclass
class LocalRound:
    """One federated client's round of local training: its trainer settings (``run.cfg.trainer`` with the round's
    epochs or steps and seed) and the loss terms added at the loss seam (``term(loss, model) -> loss``: FedProx's
    proximal term)."""

    trainer: object
    loss_terms: tuple = ()


@dataclass
class TrainStep:
    """What an adversary sees at the backward seam: the model, the batch and how to recompute the loss."""

    model: object
    batch: dict
    accelerator: object
    compute_loss: Callable[[dict], object]

    def backward(self, loss) -> None:
        """Back-propagate ``loss`` (scaled for mixed precision when needed)."""
        self.accelerator.backward(loss)


def _cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(trainer_cfg) -> tuple[str, str]:
    """``(device, mixed_precision)`` from ``trainer.device`` and ``trainer.precision``."""
    import torch

    device = trainer_cfg.device
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"trainer.device={device} is not one of auto, cpu, cuda")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible: use trainer.device=cpu or auto")
    precision = trainer_cfg.precision
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={precision} is not one of auto, fp32, bf16, fp16")
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if _cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("trainer.precision=fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU")
    return device, {"fp32": "no"}.get(precision, precision)


SCHEDULERS = ("linear", "cosine", "constant")


def _accelerator(trainer_cfg, device: str, mixed_precision: str, processes: int):
    """accelerate's ``Accelerator`` for the run: one process, DDP across the ranks (parameters that a step leaves
    without a gradient allowed: objectives and adapters may use part of a model), or FSDP (CUDA only)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if processes < 2:
        return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    distributed.start(device)
    if trainer_cfg.strategy == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=1, state_dict_type="FULL_STATE_DICT", use_orig_params=True, sync_module_states=True
        )
        return Accelerator(mixed_precision=mixed_precision, fsdp_plugin=plugin)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision, kwargs_handlers=[ddp])


def _release_other_precision(mixed_precision: str) -> None:
    """Forget accelerate's process-wide state when an earlier run of this process chose another mixed precision
    (accelerate refuses to change it otherwise: several runs in one process, as tests and sweeps do)."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state()


def check_trainer(trainer_cfg) -> None:
    """Refuse trainer settings that cannot work, before any heavy work (device, precision, schedule, sizes,
    processes)."""
    device, _ = resolve_device(trainer_cfg)
    distributed.check_processes(trainer_cfg, device)
    if trainer_cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"trainer.scheduler={trainer_cfg.scheduler} is not one of {', '.join(SCHEDULERS)}")
    for key in ("batch_size", "eval_batch_size", "gradient_accumulation_steps"):
        if trainer_cfg[key] < 1:
            raise ConfigError(f"trainer.{key}={trainer_cfg[key]} must be at least 1")
    if trainer_cfg.epochs < 0 or (trainer_cfg.max_steps is not None and trainer_cfg.max_steps < 0):
        raise ConfigError("trainer.epochs and trainer.max_steps must not be negative")


def config_fingerprint(cfg) -> dict:
    """The resolved config of a run as flat ``{dotted key: value}``, without ``resume``: what a resume must match."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", OmegaConf.to_container(cfg, resolve=True))
    flat.pop("resume", None)
    return flat


def refuse_another_config(path: Path, recorded: dict, current: dict) -> None:
    """Raise a ``ConfigError`` when the checkpoint ``path`` was written with another config fingerprint than
    ``current`` (:func:`config_fingerprint`), naming the first keys that differ. Keys the checkpoint does not
    record are settings that a later tessera added: they do not stop a resume."""
    changed = sorted(k for k in recorded if recorded[k] != current.get(k))
    if changed:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"the checkpoint {path} was written with another config ({shown}): "
            "resume with the same overrides as the original run"
        )


def planned_steps(trainer_cfg, train_examples: int) -> int:
    """The optimizer steps of a run: ``trainer.max_steps``, or epochs x steps per epoch (an epoch's examples shared
    among the processes, :func:`tessera.core.batching.batch_order`)."""
    processes = distributed.process_count(trainer_cfg)
    batches_per_epoch = math.ceil(math.ceil(train_examples / processes) / trainer_cfg.batch_size)
    per_epoch = math.ceil(batches_per_epoch / trainer_cfg.gradient_accumulation_steps)
    return trainer_cfg.max_steps or per_epoch * trainer_cfg.epochs


def _param_groups(model, learning_rate: float, weight_decay: float, adapters) -> list[dict]:
    """Optimizer groups by (weight decay, learning rate): no decay on biases and norms; the adapters' scales."""
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decay = 0.0 if parameter.ndim < 2 or "norm" in name.lower() else weight_decay
            scale = math.prod(adapter.learning_rate_scale(name) for adapter in adapters)
            groups.setdefault((decay, learning_rate * scale), []).append(parameter)
    return [{"params": params, "weight_decay": decay, "lr": lr} for (decay, lr), params in groups.items()]


class Trainer:
    """Trains ``model`` on ``train`` with the run's objectives and adversary."""

    def __init__(
        self,
        run: Run,
        model,
        train: list[dict],
        tokenizer,
        validate: Callable[[object], dict] | None,
        local=None,
    ):
        """``train`` holds the objectives' training items; ``validate(model)`` returns the validation metrics
        measured at the end of each epoch.

        ``local``: a federated client's round of local training (:class:`LocalRound`) instead of the run's
        training: its trainer settings replace ``run.cfg.trainer``, its loss terms follow the compressors' at the
        loss seam, and the round writes no checkpoint, validates nothing, fires no event and leaves
        ``run.total_steps`` alone (the federation owns them)."""
        import torch
        from transformers import get_scheduler

        self.run, self.train, self.tokenizer, self.validate = run, train, tokenizer, validate
        self.local = local
        self.cfg = local.trainer if local else run.cfg.trainer
        device, mixed_precision = resolve_device(self.cfg)
        #: The processes training together, and this one's rank (docs/distributed.md).
        self.processes, self.rank = distributed.process_count(self.cfg), distributed.rank()
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        elif self.processes > 1 and device == "cpu":
            torch.set_num_threads(distributed.threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        _release_other_precision(mixed_precision)
        self.accelerator = _accelerator(self.cfg, device, mixed_precision, self.processes)
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        groups = _param_groups(
            model, self.cfg.learning_rate, self.cfg.weight_decay, run.composition.selected("adapter")
        )
        # The fused kernel updates all parameters at once: ~100x faster than the per-tensor default on a CPU.
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.learning_rate, fused=True)
        total = self.total_steps = planned_steps(self.cfg, len(train))
        if not local:
            run.total_steps = total
        scheduler = get_scheduler(
            {"constant": "constant_with_warmup"}.get(self.cfg.scheduler, self.cfg.scheduler),
            optimizer,
            num_warmup_steps=round(self.cfg.warmup_ratio * total),
            num_training_steps=total,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.cfg.compile:  # traced at the first batch, after the speed-ups are in place
            self.model = torch.compile(self.model, dynamic=True)
        self.scheduler = scheduler
        self.objectives = run.composition.selected("objective")
        self.compressors = run.composition.selected("compress")
        adversaries = run.composition.selected("adversary")
        self.adversary = adversaries[0] if adversaries else None
        self.checkpoint_dir = run.dir / "checkpoints"
        self.global_step, self.epoch, self.batches_done = 0, 0, 0
        #: ``{"train": [step metrics], "validation": [epoch metrics]}``, kept across a resume.
        self.history: dict[str, list[dict]] = {"train": [], "validation": []}

    # --- seams ---------------------------------------------------------------------------------------------

    def compute_loss(self, batch):
        """The loss seam: one forward pass, the weighted sum of the objectives' losses, then each compressor's
        ``training_loss`` in config order (distillation)."""
        outputs = self.model(**model_inputs(batch))
        loss = sum(objective.config.weight * objective.loss(outputs, batch) for objective in self.objectives)
        for compressor in self.compressors:
            loss = compressor.training_loss(loss, outputs, batch)
        for term in self.local.loss_terms if self.local else ():
            loss = term(loss, self.model)
        return loss

    def make_batch(self, indices: list[int], position: int) -> dict:
        """Collate the items at ``indices`` and let every objective transform the batch (seeded by the batch's
        place in the run, so a resumed run draws the same masks)."""
        import torch

        batch = collate(self.train, indices, self.tokenizer.pad_token_id, self.accelerator.device)
        place = position * self.processes + self.rank  # each rank's share of a step draws its own masks
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch * 100_003 + place)
        for objective in self.objectives:
            batch = objective.transform(batch, self.tokenizer, generator)
        return batch

    def backward(self, batch, loss) -> None:
        """The backward seam: the adversary owns it when one is selected."""
        scaled = loss / self.cfg.gradient_accumulation_steps
        if self.adversary is None:
            self.accelerator.backward(scaled)
        else:
            step = TrainStep(
                self.model,
                batch,
                self.accelerator,
                lambda b: self.compute_loss(b) / self.cfg.gradient_accumulation_steps,
            )
            self.adversary.backward(step, scaled)

    def before_optimizer_step(self) -> None:
        """The seam after the gradients are complete: clip them, then let plugins act."""
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if not self.local:
            self.run.events.before_optimizer_step(self.unwrapped(), self.global_step + 1)

    # --- loop ----------------------------------------------------------------------------------------------

    def fit(self):
        """Train to the end (from the last checkpoint when ``resume=true``) and return the unwrapped model."""
        with training_speedups(self.unwrapped(), self.cfg, self.accelerator.device.type):
            if self.local:
                self._fit_round()
            else:
                self._fit_run()
        if self.fsdp:
            return self._gathered_model()
        return self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)

    def _fit_run(self) -> None:
        """The run's training: from the last checkpoint when ``resume=true``, with validation, events and
        checkpoints."""
        if self.run.cfg.resume:
            self._restore()
        elif self.accelerator.is_main_process:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)  # an earlier run's, in a reused directory
        self.run.start_step = self.global_step
        batch = distributed.describe_batch(self.cfg)
        log.info(
            "effective batch size %d (batch_size %d x %d processes x %d gradient accumulation steps)",
            batch["effective_batch_size"],
            self.cfg.batch_size,
            self.processes,
            self.cfg.gradient_accumulation_steps,
        )
        self.run.events.run_start()
        accumulation = self.cfg.gradient_accumulation_steps
        while self.epoch < self.cfg.epochs and not self._finished():
            batches = self._batches()
            self.model.train()
            losses, samples, started = [], 0, time.perf_counter()
            for position in range(self.batches_done, len(batches)):
                batch = self.make_batch(batches[position], position)
                loss = self.compute_loss(batch)
                self.backward(batch, loss)
                losses.append(loss.detach())  # read once per optimizer step, not per batch
                samples += len(batches[position])
                if (position + 1) % accumulation and position + 1 < len(batches):
                    continue
                self.before_optimizer_step()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                self.batches_done = position + 1
                elapsed = time.perf_counter() - started
                metrics = {
                    "loss": self._mean_across_ranks((sum(losses) / len(losses)).item()),
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_second": samples * self.processes / elapsed if elapsed > 0 else 0.0,
                    "epoch": self.epoch + self.batches_done / len(batches),
                }
                self.history["train"].append({"step": self.global_step, **metrics})
                self.run.events.step_end(self.global_step, metrics)
                losses, samples, started = [], 0, time.perf_counter()
                if self._finished() and position + 1 < len(batches):
                    break  # max_steps reached inside an epoch
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self._checkpoint()
            else:
                self.epoch, self.batches_done = self.epoch + 1, 0
                validation = distributed.from_main(self._validation())
                self.history["validation"].append({"epoch": self.epoch, **validation})
                self.run.events.epoch_end(self.epoch, validation)
                self._checkpoint()

    @property
    def fsdp(self) -> bool:
        """Whether the model is sharded across the ranks (``trainer.strategy=fsdp`` on several processes)."""
        return self.processes > 1 and self.cfg.strategy == "fsdp"

    def _gathered_model(self):
        """Under FSDP: a copy of the trained model with its whole parameters on rank 0 (every rank takes part in
        the gathering; the others get None)."""
        import copy

        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(self.model, writeback=False, offload_to_cpu=True):
            inner = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
            return copy.deepcopy(inner) if self.accelerator.is_main_process else None

    def unwrapped(self):
        """The model being trained, without accelerate's DDP / FSDP wrapper (what plugins and validation see)."""
        return self.accelerator.unwrap_model(self.model)

    def _batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch."""
        cfg = self.cfg
        return batch_order(
            self.train, cfg.batch_size, cfg.seed, self.epoch, cfg.group_by_length, self.processes, self.rank
        )

    def _validation(self) -> dict | None:
        """The validation metrics of the epoch: rank 0 validates the model (every rank, through the FSDP wrapper,
        under FSDP, whose parameters are sharded across the ranks); None on the other ranks."""
        if self.processes > 1 and self.cfg.strategy == "fsdp":
            return self.validate(self.model)
        return self.validate(self.unwrapped()) if self.accelerator.is_main_process else None

    def _mean_across_ranks(self, value: float) -> float:
        """The mean of ``value`` over the ranks (``value`` itself in one process)."""
        if self.processes < 2:
            return value
        import torch

        tensor = torch.tensor(value, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="mean").item()

    def _fit_round(self) -> None:
        """A federated client's local training: the round's epochs (or steps), nothing written, no event."""
        self.model.train()
        losses = []
        while self.epoch < self.cfg.epochs and not self._finished():
            batches = self._batches()
            for position, indices in enumerate(batches):
                batch = self.make_batch(indices, position)
                loss = self.compute_loss(batch)
                self.backward(batch, loss)
                losses.append(loss.detach())  # read once per optimizer step, not per batch
                if (position + 1) % self.cfg.gradient_accumulation_steps and position + 1 < len(batches):
                    continue
                self.before_optimizer_step()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                if self._finished():
                    break
            self.epoch += 1
        self.history["train"].append({"step": self.global_step, "loss": float(sum(losses) / max(1, len(losses)))})

    def _finished(self) -> bool:
        return self.global_step >= self.total_steps

    # --- checkpoints ---------------------------------------------------------------------------------------

    def _trainable_state(self) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}

    def _checkpoint(self) -> None:
        """Write a resumable checkpoint of the trainer's state, atomically (:func:`tessera.core.checkpoints.write`)."""
        import torch
        from safetensors.torch import save

        if not self.accelerator.is_main_process or self.fsdp:
            return  # under FSDP no checkpoint is written (docs/distributed.md: FSDP)
        final = self.checkpoint_dir / f"step-{self.global_step:07d}"
        if final.exists():
            return
        optimizer_tensors, optimizer_rest = checkpoints.split_optimizer_state(self.optimizer.state_dict())
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
        state = {
            "position": {"global_step": self.global_step, "epoch": self.epoch, "batches_done": self.batches_done},
            "history": self.history,
            "scheduler": self.scheduler.state_dict(),
            "optimizer": optimizer_rest,
            "python_rng": random.getstate(),
            "config": config_fingerprint(self.run.cfg),
        }
        checkpoints.write(
            final,
            {
                checkpoints.TRAINABLE_FILE: save(self._trainable_state()),
                checkpoints.OPTIMIZER_FILE: save(optimizer_tensors),
                checkpoints.RNG_FILE: save(rng),
                checkpoints.STATE_FILE: json.dumps(state).encode(),
            },
        )
        for old in self.checkpoints()[: -max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints of the run (renamed into place, with their completion marker), oldest first."""
        return checkpoints.complete(self.checkpoint_dir)

    def _restore(self) -> None:
        """Load the newest checkpoint that reads back; remove unfinished ones and unreadable ones (with a warning).
        Logs one line saying what the run resumes from, or that it starts from step 0. On several processes every
        rank loads the same checkpoint and rank 0 alone removes."""
        main = self.accelerator.is_main_process
        if self.checkpoint_dir.is_dir() and main:
            for unfinished in checkpoints.unfinished(self.checkpoint_dir):
                log.info("removing the unfinished checkpoint %s", self._shown(unfinished))
                shutil.rmtree(unfinished, ignore_errors=True)
        found = self.checkpoints()
        for path in reversed(found):
            try:
                loaded = checkpoints.read(path)
                self._refuse_another_config(path, loaded["config"])
                self._check_trainable(loaded["trainable"])
            except checkpoints.UnreadableCheckpoint as error:
                log.warning("skipping the unreadable checkpoint %s (%s): removed", self._shown(path), error)
                if main:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            self._load(loaded)
            log.info("resuming from %s (%s)", self._shown(path), self._describe_position())
            return
        where = self._shown(self.checkpoint_dir)
        if found:
            log.warning("resume: no checkpoint in %s reads back: starting from step 0", where)
        else:
            log.info("resume: no checkpoint in %s: starting from step 0", where)

    def _shown(self, path: Path) -> str:
        return str(path.relative_to(self.run.dir)) if path.is_relative_to(self.run.dir) else str(path)

    def _describe_position(self) -> str:
        steps = f"step {self.global_step} of {self.total_steps}"
        if self._finished() or self.epoch >= self.cfg.epochs:
            return f"training done, {steps}"
        return f"epoch {self.epoch + 1} of {self.cfg.epochs}, {steps}"

    def _refuse_another_config(self, path: Path, recorded: dict) -> None:
        refuse_another_config(path, recorded, config_fingerprint(self.run.cfg))

    def _check_trainable(self, trainable: dict) -> None:
        """Raise :class:`UnreadableCheckpoint` unless ``trainable`` holds exactly the model's trainable weights."""
        model = self.accelerator.unwrap_model(self.model)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
        stored = {name: tuple(value.shape) for name, value in trainable.items()}
        if stored != shapes:
            differing = sorted(name for name in stored.keys() | shapes.keys() if stored.get(name) != shapes.get(name))
            raise checkpoints.UnreadableCheckpoint(
                f"its trainable weights do not fit the model ({', '.join(differing[:3])})"
            )

    def _load(self, loaded: dict) -> None:
        import torch

        parameters = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for name, value in loaded["trainable"].items():
                parameters[name].copy_(value)
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        self.global_step, self.epoch, self.batches_done = loaded["position"]
        self.history = loaded["history"]
        torch.set_rng_state(loaded["torch_rng"])
        if torch.cuda.is_available() and len(loaded["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(loaded["cuda_rng"])
        random.setstate(loaded["python_rng"])
