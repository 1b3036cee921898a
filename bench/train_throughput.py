"""Training throughput: tessera's Trainer against the Hugging Face ``Trainer`` and a hand-written PyTorch loop.

Each contender trains the setting's model on the movie-review sentences for ``--steps`` optimizer steps after
``WARMUP_STEPS`` untimed ones, with the same batch size, ``max_length``, learning rate, warm-up, weight decay and
gradient clipping. Settings (``--settings``): ``lora`` and ``full`` (MiniLM classification, LoRA or full
fine-tuning), ``lora_no_adapter_dropout`` (the same LoRA with ``adapter.lora.dropout=0``) and ``smollm2_lora`` (SmolLM2-135M + LoRA on the instruction objective, batch 8, length 128).
Contenders (``--contenders``; the first four by default):

* **tessera**: the config from ``tessera.core.cli.compose_config``, a ``Run`` in a temporary directory, the model
  and adapters built and ``Trainer(...).fit()`` called as ``tessera.core.pipeline.execute`` does, with the built-in
  plugins (console progress, TensorBoard) active as in a real run. Its defaults: ``trainer.precision=auto`` (bf16
  autocast on a CPU with AVX512-BF16), dynamic padding with length-grouped batches, ``torch.optim.AdamW(...,
  fused=True)``;
* **hf_trainer** (matched settings): ``transformers.Trainer`` with ``TrainingArguments`` set to tessera's
  efficiency settings: ``bf16`` when tessera resolves to bf16, ``train_sampling_strategy="group_by_length"`` when
  tessera groups by length (``"random"`` otherwise), no evaluation, saving or logging, ``report_to="none"``,
  ``disable_tqdm=True``, ``dataloader_num_workers=0``, ``remove_unused_columns=False``; its default optimizer
  (``adamw_torch_fused``, the same fused kernel as tessera);
* **hf_trainer_defaults** (what a user gets from ``TrainingArguments``): only the training recipe is set (output
  directory, batch size, gradient accumulation, ``max_steps``, learning rate, weight decay, scheduler and its
  warm-up steps, ``max_grad_norm``, seed, ``label_names``); everything else is transformers' default:
  ``bf16=False`` (fp32: no autocast), ``train_sampling_strategy="random"`` (no length grouping),
  ``optim="adamw_torch_fused"``, ``logging_strategy="steps"`` / ``logging_steps=500`` and ``save_strategy="steps"``
  / ``save_steps=500`` (neither fires within a run this short), ``eval_strategy="no"``, ``report_to="none"``,
  ``disable_tqdm=None`` (resolved from the log level: ``True`` here, since this script sets
  ``TRANSFORMERS_VERBOSITY=error``; at the default level a user also gets a progress bar, one line update a step),
  ``dataloader_num_workers=0``, ``dataloader_pin_memory=True`` (no effect on a CPU), ``remove_unused_columns=True``,
  ``torch_compile=False``. Its batches are padded by ``DataCollatorWithPadding``, the collator the Trainer picks
  itself when given a tokenizer. The resolved values are printed under ``hf_trainer_defaults_arguments``;
* **plain_loop**: ``torch.optim.AdamW(..., fused=True)`` with the same decay / no-decay groups as tessera, the same
  schedule, bf16 autocast when tessera uses it, clipping, padding in the loop, over the same batches (same example
  indices, hence the same padded shapes) as tessera;
* **hf_trainer_compiled**: the matched Trainer with ``torch_compile=True``;
* **tessera_compiled**: tessera with ``trainer.compile=true``;
* **tessera_without_speedups**: tessera with ``trainer.fast_dropout=false trainer.fused_lora=false`` (what the two
  speed-ups add).

Timing: every contender stamps ``time.perf_counter()`` at the end of optimizer step ``WARMUP_STEPS`` and at the
end of the last step, from its own step-end point (tessera: a ``tessera_step_end`` hook registered ``trylast``,
after the built-in loggers; both HF Trainers: ``TrainerCallback.on_step_end``; the plain loop: after
``zero_grad``). The window therefore holds exactly ``--steps`` whole steps (collation, forward, backward, clipping,
optimizer, schedule and each trainer's per-step bookkeeping) and none of the model loading or set-up.

The contenders run interleaved (tessera, HF matched, HF defaults, plain, tessera, ...) in one process, each on a
freshly loaded model. Reported per setting: each contender's per-repeat measurements and medians, the ratios of
tessera's median to each other contender's (samples and padded positions per second), and the per-repeat (paired)
ratios with their median: on a shared 2-core machine the absolute numbers move a lot, the paired ratios much less.
The HF samplers (length-grouped mega-batches sorted longest first, or random) make other batches than tessera's;
the padded positions processed are reported next to the samples so the work can be compared.

Usage: ``.venv/bin/python bench/train_throughput.py [--steps N] [--repeats N] [--quick] [--grouping on|off|both]``.
One JSON object is printed on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: Optimizer steps run before the timed window (first-call allocations, autocast caches, warm-up of the allocator).
WARMUP_STEPS = 3
#: The token length inputs are cut to, fixed so that every contender and every earlier figure sees the same inputs
#: (``data.max_length: auto`` would pick 47 for the movie-review sentences).
MAX_LENGTH = 64


@dataclass(frozen=True)
class Setting:
    """One workload: extra ``tessera train`` overrides (tessera's defaults otherwise) and the input length."""

    overrides: tuple[str, ...]
    max_length: int = MAX_LENGTH


#: MiniLM full fine-tuning gets the learning rate that works for it on this data (it does not change the work
#: done); SmolLM2 + LoRA trains on the instruction objective as ``experiment=instruct`` does (batch 8, length 128).
SETTINGS = {
    "lora": Setting(("adapter=lora",)),
    "lora_no_adapter_dropout": Setting(("adapter=lora", "adapter.lora.dropout=0.0")),
    "full": Setting(("adapter=none", "trainer.learning_rate=5e-5")),
    "smollm2_lora": Setting(
        (
            "model=smollm2",
            "objective=instruction",
            "adapter=lora",
            "trainer.batch_size=8",
            "trainer.learning_rate=5e-4",
        ),
        max_length=128,
    ),
}


@dataclass
class Workload:
    """What the contenders share in one setting: the composed config, the tokenized training split, the tokenizer."""

    name: str
    cfg: object
    #: tessera's training items of the split, as the objective builds them: ``{"input_ids", "labels"}`` for
    #: classification, ``{"input_ids", "lm_labels"}`` (-100 on the prompt) for the instruction objective.
    train: list
    tokenizer: object
    labels: list[str]
    steps: int
    #: The plugins of the process (:func:`tessera.core.plugins.discover`), as a ``tessera train`` has them.
    plugins: object
    #: The model head the objective needs: ``sequence-classification`` or ``causal-lm``.
    task: str

    @property
    def causal(self) -> bool:
        """Whether the setting trains a decoder on token targets (the instruction objective)."""
        return self.task == "causal-lm"

    def hf_rows(self) -> list[dict]:
        """The items as transformers models take them: token targets under ``labels`` (the model shifts them)."""
        if self.causal:
            return [{"input_ids": item["input_ids"], "labels": item["lm_labels"]} for item in self.train]
        return [{"input_ids": item["input_ids"], "labels": item["labels"]} for item in self.train]

    @property
    def total_steps(self) -> int:
        """Optimizer steps per run: the untimed warm-up plus the timed window."""
        return WARMUP_STEPS + self.steps

    @property
    def device(self) -> str:
        """The device tessera's ``trainer.device`` resolves to here."""
        from tessera.core.trainer import resolve_device

        return resolve_device(self.cfg.trainer)[0]

    @property
    def bf16(self) -> bool:
        """Whether tessera's ``trainer.precision`` resolves to bf16 autocast here."""
        from tessera.core.trainer import resolve_device

        return resolve_device(self.cfg.trainer)[1] == "bf16"

    @property
    def warmup_schedule_steps(self) -> int:
        """Linear warm-up steps of the learning-rate schedule, computed as tessera's Trainer does."""
        return round(self.cfg.trainer.warmup_ratio * self.total_steps)

    @property
    def scheduler_name(self) -> str:
        """The ``transformers.get_scheduler`` name of ``trainer.scheduler`` (as tessera maps it)."""
        return {"constant": "constant_with_warmup"}.get(self.cfg.trainer.scheduler, self.cfg.trainer.scheduler)

    def tessera_batches(self) -> list[list[int]]:
        """The example indices of every step of a run, in tessera's order (epoch 0)."""
        from tessera.core.batching import batch_order

        trainer = self.cfg.trainer
        return batch_order(self.train, trainer.batch_size, trainer.seed, 0, trainer.group_by_length)[: self.total_steps]


@dataclass
class Measurement:
    """One timed window of one contender."""

    seconds: float
    cpu_seconds: float
    samples: int
    padded_tokens: int
    trainable_parameters: int
    #: The autocast the contender trained under (``"bf16"`` or ``"no"``), as its accelerator reports it.
    mixed_precision: str

    def as_dict(self) -> dict:
        """The measurement with its rates, for the JSON report."""
        return {
            "samples_per_second": self.samples / self.seconds,
            "padded_tokens_per_second": self.padded_tokens / self.seconds,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "samples": self.samples,
            "padded_tokens": self.padded_tokens,
            "trainable_parameters": self.trainable_parameters,
            "mixed_precision": self.mixed_precision,
        }


class Window:
    """Wall-clock and process CPU stamps of the timed window, set from a contender's step-end point.

    The CPU time (all threads of this process) is a noise indicator: on a shared machine the wall time of a run
    stretches when another process takes a core, its CPU time much less.
    """

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.started = self.ended = None

    def step_end(self, step: int) -> None:
        """Stamp the clocks if ``step`` (1-based) is where the window starts or ends."""
        if step == self.first:
            self.started = (time.perf_counter(), time.process_time())
        elif step == self.last:
            self.ended = (time.perf_counter(), time.process_time())

    def measurement(self, samples: int, padded_tokens: int, model, mixed_precision: str) -> Measurement:
        """The window's measurement; fails loudly if a contender never reached one of its ends."""
        if self.started is None or self.ended is None:
            raise RuntimeError(f"the run did not reach steps {self.first} and {self.last}")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        wall, cpu = (end - start for end, start in zip(self.ended, self.started))
        return Measurement(wall, cpu, samples, padded_tokens, trainable, str(mixed_precision))


def _window_work(batches: list[list[int]], lengths: list[int]) -> tuple[int, int]:
    """``(samples, padded positions)`` of the timed batches among ``batches`` (one per step, step order)."""
    timed = batches[WARMUP_STEPS:]
    return sum(map(len, timed)), sum(len(b) * max(lengths[i] for i in b) for b in timed)


# --- shared set-up ---------------------------------------------------------------------------------------------


def prepare_workload(name: str, overrides: list[str], steps: int, plugins, max_length: int = MAX_LENGTH) -> Workload:
    """Compose tessera's config for a setting and tokenize its training split, trimmed to whole batches."""
    from tessera.core.cli import compose_config
    from tessera.core.data import load_splits
    from tessera.core.models import load_tokenizer
    from tessera.core.run import compose

    cfg = compose_config(
        [*overrides, f"data.max_length={max_length}", f"trainer.max_steps={WARMUP_STEPS + steps}"], plugins
    )
    splits = load_splits(cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    batch_size = cfg.trainer.batch_size
    whole = len(splits.train) // batch_size * batch_size
    composition = compose(cfg, plugins)
    train = composition.item_builder.items(splits.train[:whole], tokenizer, cfg.data.max_length, cfg.trainer.seed)
    workload = Workload(name, cfg, train, tokenizer, splits.labels, steps, plugins, composition.task)
    if workload.total_steps > whole // batch_size:
        raise SystemExit(f"--steps {steps} needs more than one epoch ({whole // batch_size} batches): use fewer")
    return workload


def build_reference_model(workload: Workload):
    """The setting's model straight from transformers (MiniLM with a fresh classification head, or SmolLM2 as a
    causal LM), and the same LoRA as tessera's ``adapter.lora`` when selected."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tessera.core.models import pretrained_path

    torch.manual_seed(workload.cfg.trainer.seed)
    path = pretrained_path(workload.cfg.model)
    if workload.causal:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(workload.labels), dtype=torch.float32
        )
    lora = workload.cfg.adapter.get("lora")
    if lora is None:
        return model
    import peft

    targets = list(lora.target_modules)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=None if lora.modules_to_save is None else list(lora.modules_to_save),
        bias=lora.bias,
        task_type=peft.TaskType.CAUSAL_LM if workload.causal else peft.TaskType.SEQ_CLS,
    )
    return peft.get_peft_model(model, config)


# --- contenders ------------------------------------------------------------------------------------------------


def run_tessera(workload: Workload, **trainer_keys) -> Measurement:
    """tessera's Trainer, driven as ``pipeline.execute`` drives it, timed by a ``tessera_step_end`` hook;
    ``trainer_keys`` change ``trainer.*`` settings (``compile=True``)."""
    from omegaconf import OmegaConf

    from tessera import hookimpl
    from tessera.core.models import load_model
    from tessera.core.run import Run, compose
    from tessera.core.trainer import Trainer, planned_steps

    window = Window(WARMUP_STEPS, workload.total_steps)

    class Timer:
        @hookimpl(trylast=True)
        def tessera_step_end(self, run, step, metrics):
            window.step_end(step)

    cfg = OmegaConf.merge(workload.cfg, {"trainer": trainer_keys}) if trainer_keys else workload.cfg
    composition = compose(cfg, workload.plugins)
    composition.plugins.manager.register(Timer(), name="bench.timer")
    with tempfile.TemporaryDirectory() as directory:
        run = Run(composition, Path(directory))
        run.state["labels"] = workload.labels
        run.total_steps = planned_steps(cfg.trainer, len(workload.train))
        model = load_model(cfg.model, composition.task, workload.labels, workload.tokenizer, cfg.trainer.seed)
        for adapter in composition.selected("adapter"):
            model = adapter.apply(model, run)
        trainer = Trainer(run, model, workload.train, workload.tokenizer, validate=lambda trained: {})
        try:
            model = trainer.fit()
        finally:
            run.events.run_end("complete", {})
    samples, tokens = _window_work(workload.tessera_batches(), [len(item["input_ids"]) for item in workload.train])
    return window.measurement(samples, tokens, model, trainer.accelerator.mixed_precision)


def _run_transformers_trainer(workload: Workload, **efficiency) -> Measurement:
    """``transformers.Trainer`` on the workload's recipe plus the ``efficiency`` arguments, timed by a callback."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    window = Window(WARMUP_STEPS, workload.total_steps)
    shapes = []
    # the collators the Trainer's users pick: token targets padded with -100 for a decoder
    pad = DataCollatorForSeq2Seq(workload.tokenizer) if workload.causal else DataCollatorWithPadding(workload.tokenizer)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            window.step_end(state.global_step)

    def collate(features):
        batch = pad(features)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    trainer_cfg = workload.cfg.trainer
    dataset = workload.hf_rows()
    model = build_reference_model(workload)
    with tempfile.TemporaryDirectory() as directory:
        args = TrainingArguments(
            output_dir=directory,
            per_device_train_batch_size=trainer_cfg.batch_size,
            gradient_accumulation_steps=trainer_cfg.gradient_accumulation_steps,
            max_steps=workload.total_steps,
            learning_rate=trainer_cfg.learning_rate,
            weight_decay=trainer_cfg.weight_decay,
            lr_scheduler_type=workload.scheduler_name,
            warmup_steps=workload.warmup_schedule_steps,
            max_grad_norm=trainer_cfg.max_grad_norm,
            seed=trainer_cfg.seed,
            label_names=["labels"],
            **efficiency,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collate,
            processing_class=workload.tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()
    timed = shapes[WARMUP_STEPS : workload.total_steps]
    return window.measurement(
        sum(n for n, _ in timed), sum(n * w for n, w in timed), model, trainer.accelerator.mixed_precision
    )


def _matched_arguments(workload: Workload) -> dict:
    """The ``TrainingArguments`` that give the Trainer tessera's precision, sampling and quiet bookkeeping."""
    return dict(
        bf16=workload.bf16,
        use_cpu=workload.device == "cpu",
        train_sampling_strategy="group_by_length" if workload.cfg.trainer.group_by_length else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def run_hf_trainer(workload: Workload) -> Measurement:
    """``transformers.Trainer`` with tessera's precision, sampling and quiet bookkeeping (matched settings)."""
    return _run_transformers_trainer(workload, **_matched_arguments(workload))


def run_hf_trainer_compiled(workload: Workload) -> Measurement:
    """The matched ``transformers.Trainer`` with ``torch_compile=True`` (inductor; its compilations of the first
    shapes fall in the untimed warm-up, later ones in the window, as in a real run)."""
    return _run_transformers_trainer(workload, **_matched_arguments(workload), torch_compile=True)


def run_hf_trainer_defaults(workload: Workload) -> Measurement:
    """``transformers.Trainer`` with the recipe only: precision, sampling, optimizer, logging at their defaults."""
    return _run_transformers_trainer(workload)


def run_plain_loop(workload: Workload) -> Measurement:
    """A hand-written loop over tessera's batches: pad, autocast forward, backward, clip, fused AdamW, schedule."""
    import torch
    from transformers import get_scheduler

    trainer_cfg = workload.cfg.trainer
    device = workload.device
    model = build_reference_model(workload).to(device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "norm" in n.lower())]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": trainer_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=trainer_cfg.learning_rate,
        fused=True,
    )
    scheduler = get_scheduler(workload.scheduler_name, optimizer, workload.warmup_schedule_steps, workload.total_steps)
    rows, pad_id = workload.hf_rows(), workload.tokenizer.pad_token_id
    input_ids = [row["input_ids"] for row in rows]
    batches = workload.tessera_batches()
    window = Window(WARMUP_STEPS, workload.total_steps)
    model.train()
    for step, indices in enumerate(batches, 1):
        width = max(len(input_ids[i]) for i in indices)

        def padded(key: str, fill: int, indices=indices, width=width) -> list:
            return [rows[i][key] + [fill] * (width - len(rows[i][key])) for i in indices]

        batch = {
            "input_ids": torch.tensor(padded("input_ids", pad_id), device=device),
            "attention_mask": torch.tensor(
                [[1] * len(input_ids[i]) + [0] * (width - len(input_ids[i])) for i in indices], device=device
            ),
            "labels": torch.tensor(
                padded("labels", -100) if workload.causal else [rows[i]["labels"] for i in indices], device=device
            ),
        }
        with torch.autocast(device, dtype=torch.bfloat16, enabled=workload.bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.step_end(step)
    samples, tokens = _window_work(batches, list(map(len, input_ids)))
    return window.measurement(samples, tokens, model, "bf16" if workload.bf16 else "no")


def run_tessera_compiled(workload: Workload) -> Measurement:
    """tessera's Trainer with ``trainer.compile=true`` (its compilations fall in the window as the Trainer's do)."""
    return run_tessera(workload, compile=True)


def run_tessera_without_speedups(workload: Workload) -> Measurement:
    """tessera's Trainer with ``trainer.fast_dropout=false trainer.fused_lora=false``: what the two speed-ups add."""
    return run_tessera(workload, fast_dropout=False, fused_lora=False)


CONTENDERS = {
    "tessera": run_tessera,
    "tessera_compiled": run_tessera_compiled,
    "tessera_without_speedups": run_tessera_without_speedups,
    "hf_trainer": run_hf_trainer,
    "hf_trainer_compiled": run_hf_trainer_compiled,
    "hf_trainer_defaults": run_hf_trainer_defaults,
    "plain_loop": run_plain_loop,
}
#: The contenders run unless ``--contenders`` names others (the compiled Trainer compiles for minutes here).
DEFAULT_CONTENDERS = ("tessera", "hf_trainer", "hf_trainer_defaults", "plain_loop")


# --- report ----------------------------------------------------------------------------------------------------


def summarize(runs: dict[str, list[Measurement]]) -> dict:
    """Medians per contender, the ratios of tessera's median to the others', the per-repeat (paired) ratios and
    their median."""
    report = {}
    for name, found in runs.items():
        rows = [m.as_dict() for m in found]
        report[name] = {
            "samples_per_second_median": statistics.median(r["samples_per_second"] for r in rows),
            "padded_tokens_per_second_median": statistics.median(r["padded_tokens_per_second"] for r in rows),
            "runs": rows,
        }
    tessera = report["tessera"]
    others = {"hf_trainer": "hf", "hf_trainer_compiled": "hf_compiled", "hf_trainer_defaults": "hf_defaults"}
    for other, key in {
        **others,
        "plain_loop": "plain",
        "tessera_compiled": "tessera_compiled",
        "tessera_without_speedups": "tessera_without_speedups",
    }.items():
        if other not in runs:
            continue
        report[f"ratio_tessera_vs_{key}"] = (
            tessera["samples_per_second_median"] / report[other]["samples_per_second_median"]
        )
        report[f"ratio_tessera_vs_{key}_padded_tokens"] = (
            tessera["padded_tokens_per_second_median"] / report[other]["padded_tokens_per_second_median"]
        )
        paired = [a.samples / a.seconds / (b.samples / b.seconds) for a, b in zip(runs["tessera"], runs[other])]
        report[f"paired_ratios_tessera_vs_{key}"] = paired
        report[f"paired_ratio_tessera_vs_{key}_median"] = statistics.median(paired)
    matched = [name for name in ("hf_trainer", "hf_trainer_compiled") if name in runs]
    if matched:  # the Trainer at its best matching settings: the faster of plain and compiled
        best = max(matched, key=lambda name: report[name]["samples_per_second_median"])
        report["hf_best_matched"] = best
        report["ratio_tessera_vs_hf_best"] = (
            tessera["samples_per_second_median"] / report[best]["samples_per_second_median"]
        )
    return report


def hf_trainer_default_arguments() -> dict:
    """The ``TrainingArguments`` defaults that decide the ``hf_trainer_defaults`` contender's speed, as resolved."""
    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory() as directory:
        args = TrainingArguments(output_dir=directory)
    return {
        "bf16": args.bf16,
        "train_sampling_strategy": args.train_sampling_strategy,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "logging_steps": args.logging_steps,
        "save_steps": args.save_steps,
        "disable_tqdm": args.disable_tqdm,
        "dataloader_num_workers": args.dataloader_num_workers,
        "torch_compile": args.torch_compile,
    }


def machine() -> dict:
    """The CPU, core count and library versions the numbers were measured on."""
    import torch
    import transformers

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def tessera_source() -> dict:
    """Where the measured tessera was imported from: its git commit, and whether the package differs from it."""
    import tessera

    package = str(Path(tessera.__file__).parent)

    def git(*args: str) -> str | None:
        found = subprocess.run(["git", "-C", package, *args], capture_output=True, text=True)
        return found.stdout.strip() if found.returncode == 0 else None

    modified = bool(git("status", "--porcelain", "--", "."))
    return {"path": package, "commit": git("rev-parse", "HEAD"), "modified": modified}


def benchmark(steps: int, repeats: int, grouping: list[bool], settings: list[str], contenders: list[str]) -> dict:
    """Run the settings under each padding policy, the contenders interleaved in each repeat; return the report."""
    import torch
    import transformers
    from accelerate.state import AcceleratorState

    from tessera.core.cli import prepare_hydra
    from tessera.core.plugins import discover

    transformers.utils.logging.disable_progress_bar()
    plugins = discover()
    prepare_hydra(plugins)
    threads = torch.get_num_threads()
    report = {}
    for grouped in grouping:
        for name in settings:
            setting = SETTINGS[name]
            key = name if grouped else f"{name}_no_grouping"
            overrides = [*setting.overrides, f"trainer.group_by_length={grouped}"]
            workload = prepare_workload(key, overrides, steps, plugins, setting.max_length)
            runs = {contender: [] for contender in contenders}
            for repeat in range(repeats):
                for contender in contenders:
                    measured = CONTENDERS[contender](workload)
                    runs[contender].append(measured)
                    print(
                        f"[{key} {repeat + 1}/{repeats}] {contender:<19} "
                        f"{measured.samples / measured.seconds:7.2f} samples/s",
                        file=sys.stderr,
                        flush=True,
                    )
                    # accelerate keeps one process-wide state: without a reset the fp32 HF run would inherit
                    # bf16 from the runs before it, and tessera's bf16 would then be refused after it.
                    AcceleratorState._reset_state(reset_partial_state=True)
                    gc.collect()
            report[key] = {
                "model": workload.cfg.model.name,
                "objective": "instruction" if workload.causal else "classification",
                "adapter": "none" if "adapter=none" in setting.overrides else "lora",
                "group_by_length": grouped,
                "bf16": workload.bf16,
                "batch_size": workload.cfg.trainer.batch_size,
                "max_length": workload.cfg.data.max_length,
                **summarize(runs),
            }
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"a contender changed torch's threads from {threads} to {torch.get_num_threads()}")
    return {"torch_threads": threads, "settings": report}


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark with progress on stderr, print the JSON report on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per setting (default 3)")
    parser.add_argument("--quick", action="store_true", help="5 steps, 1 repeat, grouped batches only")
    parser.add_argument(
        "--grouping",
        choices=("on", "off", "both"),
        default="on",
        help="length-grouped batches (tessera's default), random batches, or both (default on)",
    )
    parser.add_argument(
        "--settings",
        default="lora,full",
        help=f"comma-separated settings among {', '.join(SETTINGS)} (default lora,full)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated contenders among {', '.join(CONTENDERS)}; tessera always runs "
        f"(default {','.join(DEFAULT_CONTENDERS)})",
    )
    args = parser.parse_args(argv)
    steps, repeats, grouping = args.steps, args.repeats, args.grouping
    settings = args.settings.split(",")
    contenders = ["tessera", *(c for c in args.contenders.split(",") if c != "tessera")]
    unknown = [name for name in settings if name not in SETTINGS] + [c for c in contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown setting or contender: {', '.join(unknown)}")
    if args.quick:
        steps, repeats, grouping = 5, 1, "on"
    started, load_before = time.perf_counter(), os.getloadavg()
    with contextlib.redirect_stdout(sys.stderr):
        result = benchmark(
            steps, repeats, {"on": [True], "off": [False], "both": [True, False]}[grouping], settings, contenders
        )
    report = {
        "machine": machine(),
        "tessera": tessera_source(),
        "torch_threads": result["torch_threads"],
        "steps": steps,
        "warmup_steps": WARMUP_STEPS,
        "repeats": repeats,
        "hf_trainer_defaults_arguments": hf_trainer_default_arguments(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_seconds": time.perf_counter() - started,
        "settings": result["settings"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
