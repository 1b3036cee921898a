"""The typed config schema of ``tessera train``: Hydra checks every override against these dataclasses.

The YAML presets in ``tessera/conf`` (``model=minilm``, ``data=csv``, ``experiment=smoke``...) fill these nodes;
the technique groups (``objective``, ``adapter``...) hold one typed node per selected technique, in config order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from omegaconf import MISSING

from tessera.core.techniques import CONFIG_FAMILIES, FAMILIES


@dataclass
class ModelConfig:
    """The base model. ``pretrained`` is ``asset:NAME`` (a packaged offline asset) or a local HF directory."""

    name: str = MISSING
    pretrained: str = MISSING
    #: Build the architecture from ``pretrained``'s config with these changes and random weights (tiny test models).
    random_init: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The labelled text data and how it is split and tokenized."""

    name: str = MISSING
    #: ``csv`` or ``jsonl``.
    format: str = MISSING
    #: The data file: a local path, or ``asset:NAME/FILE`` for a file of a packaged asset.
    path: Optional[str] = None
    #: Optional separate files for the validation and test splits; otherwise they are carved from ``path``.
    validation_path: Optional[str] = None
    test_path: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    #: The label set, in class-index order; inferred from the training data (sorted) when empty.
    labels: list[str] = field(default_factory=list)
    validation_fraction: float = 0.05
    test_fraction: float = 0.2
    #: Seed of the train / validation / test split: fixed, independent of the training seed.
    split_seed: int = 0
    #: Tokens per example (longer texts are truncated), or ``auto``: the 95th percentile of the training texts'
    #: token lengths, capped at the model's limit (see :mod:`tessera.core.max_length`).
    max_length: Any = "auto"
    #: Use only the first N examples of each split after shuffling (quick runs); null for all.
    limit_train: Optional[int] = None
    limit_eval: Optional[int] = None
    #: Unlabelled text for ``objective=consistency``: ``rest`` (the training examples beyond ``limit_train``, labels
    #: dropped) or a csv / jsonl file (a path or ``asset:NAME/FILE``, its ``text_column``); null: none.
    unlabelled: Optional[str] = None
    #: Use only the first N unlabelled texts (shuffled from ``split_seed``); null for all.
    limit_unlabelled: Optional[int] = None


@dataclass
class TrainerConfig:
    """tessera's training loop."""

    #: ``auto`` picks CUDA when available.
    device: str = "auto"
    #: ``auto`` is bf16 autocast where the device supports it (CUDA, or a CPU with AVX512-BF16), else fp32.
    precision: str = "auto"
    epochs: int = 3
    max_steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    #: ``linear``, ``cosine`` or ``constant``, after ``warmup_ratio`` of the steps of linear warm-up.
    scheduler: str = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    #: Batch examples of similar length together (less padding, same examples per epoch).
    group_by_length: bool = True
    #: On a CPU, dropout masks from 16-bit slices of 64-bit random draws: the same Bernoulli masks from a quarter
    #: of the random numbers (tessera/core/speedups.py; no effect on CUDA).
    fast_dropout: bool = True
    #: PEFT LoRA layers computed as one ``addmm`` adding the scaled low-rank product into the frozen layer's output
    #: (tessera/core/speedups.py).
    fused_lora: bool = True
    #: ``torch.compile`` the model for training (dynamic shapes: one graph for every batch length). Off by default:
    #: on the benchmark's CPU compiling cost more than it saved (docs/benchmarks.md).
    compile: bool = False
    #: Write a resumable checkpoint every N optimizer steps (0: only at the end of each epoch).
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    #: torch threads; null keeps torch's default (with several CPU processes: the cores shared among them).
    num_threads: Optional[int] = None
    #: Processes that train together (DDP or FSDP through accelerate; docs/distributed.md): more than 1 starts
    #: ``tessera train`` under torchrun, one process a CPU share or a GPU. Under a user's torchrun: its world size.
    processes: int = 1
    #: ``ddp`` (every rank holds the whole model) or ``fsdp`` (parameters sharded across the GPUs; CUDA only).
    strategy: str = "ddp"


@dataclass
class ServeConfig:
    """How ``tessera serve`` / ``tessera predict`` start vLLM on the export (see docs/serving.md)."""

    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 8000
    #: Required as ``Authorization: Bearer <key>`` on every route but /health, /ping, /version and /metrics.
    api_key: Optional[str] = None
    #: The served model name; null: ``<model.name>-<data.name>`` for a run, the directory name otherwise.
    name: Optional[str] = None
    #: null: float32 for classifiers (probabilities as in training), bfloat16 for generation (fastest on CPU).
    dtype: Optional[str] = None
    max_model_len: Optional[int] = None
    #: null: room for two sequences of ``max_model_len`` tokens, at least 64 MiB.
    kv_cache_memory_bytes: Optional[int] = None
    #: Most requests vLLM batches together; null keeps vLLM's default.
    max_num_seqs: Optional[int] = None
    #: Skip torch.compile: a server starts in seconds instead of minutes (see docs/benchmarks.md).
    enforce_eager: bool = True
    #: ``VLLM_CPU_OMP_THREADS_BIND`` for the CPU build (``auto``, ``nobind`` or CPU ids such as ``0-1``).
    cpu_threads_bind: str = "auto"
    #: Serve a decoder run's merged export even where vLLM could serve its LoRA adapters as named models.
    merged: bool = False
    #: Seconds to wait for the server to answer /health.
    start_timeout: float = 600.0
    #: Log every request (method, route, status, latency) on the server's output.
    log_requests: bool = True
    #: More ``vllm serve`` flags, passed as they are (``[--max-num-batched-tokens, "4096"]``).
    extra_args: list[str] = field(default_factory=list)
    #: Watch a classifier's answers: label and confidence metrics; with the export's drift reference, the
    #: served-traffic log and drift gauges (docs/serving.md#monitoring).
    monitor: bool = True
    #: The served-traffic log (JSON Lines); null: ``RUN_DIR/monitor/served.jsonl`` when serving a run, else none.
    traffic_log: Optional[str] = None
    #: Served inputs in the drift window, and how many it needs before drift is judged.
    drift_window: int = 200
    drift_min_window: int = 100
    #: A feature drifted when its PSI is above ``drift_psi`` or its KS test's p-value below ``drift_ks_pvalue``.
    drift_psi: float = 0.2
    drift_ks_pvalue: float = 0.01
    #: ADWIN's confidence parameter (smaller: fewer, surer change points).
    drift_adwin_delta: float = 0.002


@dataclass
class PrivacyConfig:
    """Differential privacy and secure aggregation of a federation (``federated.privacy``, docs/federated.md)."""

    #: ``none``, ``server_fixed``, ``server_adaptive``, ``client_fixed`` or ``client_adaptive`` (Flower's DP
    #: wrappers; client-side clipping runs as Flower client mods).
    dp: str = "none"
    #: The Gaussian noise's standard deviation over the clipping norm (z); ignored when ``target_epsilon`` is set.
    noise_multiplier: float = 1.0
    #: The L2 bound on every client's update (fixed clipping).
    clipping_norm: float = 1.0
    #: Adaptive clipping (Andrew et al. 2021): the first norm, the quantile of updates to clip, the norm's step size
    #: and the noise on the clipped count (null: Flower's clients per round / 20).
    initial_clipping_norm: float = 0.1
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: Optional[float] = None
    #: The delta that epsilon is reported at (RDP accountant, user-level).
    delta: float = 1e-5
    #: When set, the noise multiplier that reaches this epsilon over ``federated.rounds`` at ``delta``.
    target_epsilon: Optional[float] = None
    #: Secure aggregation (Flower's SecAgg+): the server sees only the sum of the sampled clients' updates.
    secagg: bool = False
    #: SecAgg+: shares of each client's secret (a fraction of the clients per round, or a count) and the fraction of
    #: them needed to reconstruct it; values are clipped to +-clipping_range and quantised to quantization_range
    #: levels; max_weight bounds a client's weight (null: the most examples a client has; 1 with DP's equal
    #: weights).
    secagg_num_shares: float = 1.0
    secagg_reconstruction_threshold: float = 0.7
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304
    secagg_modulus_range: int = 4294967296
    secagg_max_weight: Optional[float] = None


@dataclass
class FederatedConfig:
    """A federated stage (selected by ``aggregator=NAME``): its clients, rounds and faults (docs/federated.md)."""

    #: Clients the training split is shared out among (in process: nodes of tessera's grid).
    clients: int = 8
    rounds: int = 10
    #: ``iid``, ``dirichlet`` (label shares drawn from Dirichlet(alpha)) or ``by_label`` (contiguous label shards).
    partition: str = "iid"
    alpha: float = 0.5
    #: Local training per client and round: epochs over its partition, or optimizer steps when set.
    local_epochs: int = 1
    local_steps: Optional[int] = None
    #: The fraction of the clients sampled each round.
    fraction: float = 1.0
    #: A round completes when at least this many sampled clients answered; null: every sampled client.
    min_clients: Optional[int] = None
    #: Seconds the server waits for a round's replies.
    timeout: float = 3600.0
    #: Simulated faults (in process): the probability that a sampled client drops out of a round.
    dropout: float = 0.0
    #: Byzantine clients for robustness experiments: ``none``, ``sign_flip``, ``gaussian``, ``label_flip``, ``alie``.
    attack: str = "none"
    #: The fraction of the clients that attack (seeded by trainer.seed; at least one when positive).
    attackers: float = 0.0
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


@dataclass
class TuneConfig:
    """An Optuna study over ``tessera train`` runs (``tessera tune``, docs/tuning.md)."""

    #: The search space: ``{dotted config key: a list of choices, or {type, low, high, step, choices}}`` with
    #: ``type`` one of ``float``, ``int``, ``loguniform``, ``categorical``.
    space: dict[str, Any] = field(default_factory=dict)
    #: The study's name in its storage: workers with the same storage and name share the study.
    study: str = "tessera"
    #: Where the study's trial runs, report and plots go (``<dir>/trials/<number>/``, ``<dir>/tune_report.md``).
    dir: str = "outputs/tune/${tune.study}"
    #: Any Optuna RDB URL (``sqlite:///path.db``, ``postgresql://...``, ``mysql+pymysql://...``); null:
    #: ``sqlite:///<dir>/study.db``.
    storage: Optional[str] = None
    #: The finished (complete or pruned) trials the study should reach, counting earlier runs and other workers.
    trials: int = 20
    #: Seconds this process starts new trials for; null: no limit.
    timeout: Optional[float] = None
    #: The validation metric the trials are scored on (a key of the epoch's validation metrics), and its direction.
    metric: str = "accuracy"
    direction: str = "maximize"
    #: ``tpe``, ``random`` or ``grid`` (every combination of a space of choices).
    sampler: str = "tpe"
    #: The sampler's seed (worker N uses seed + N); null: a fresh seed.
    seed: Optional[int] = None
    #: ``median``, ``hyperband`` or ``none``: stop a trial after an epoch whose validation metric is unpromising.
    pruner: str = "median"
    #: Median pruner: trials that finish before any is pruned, and epochs of each trial before it may be pruned.
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 0
    #: Processes on this machine working on the study together (each with an equal share of the cores).
    workers: int = 1
    #: Seconds between a worker's heartbeats; a trial whose worker is silent for twice as long is marked failed.
    heartbeat: int = 60
    #: Parameter sets to try first (``[{trainer.learning_rate: 5e-4}]``), Optuna's ``enqueue_trial``.
    enqueue: list[Any] = field(default_factory=list)
    #: Train (and export) the best trial's composition again in ``<dir>/best/`` at the end, with
    #: ``retrain_overrides`` on top (``["data.limit_train=null"]``).
    retrain: bool = False
    retrain_overrides: list[str] = field(default_factory=list)


@dataclass
class PluginsConfig:
    """Which plugins a run may use, by name (see ``tessera plugins``)."""

    #: Only these third-party plugins (built-ins always load unless blocked); null admits all.
    allow: Optional[list[str]] = None
    block: list[str] = field(default_factory=list)


@dataclass
class StageConfig:
    """One stage of a multi-stage job: the job's config with ``overrides``, trained and exported."""

    name: str = MISSING
    #: Hydra overrides applied on top of the job's own (``objective=mlm``, ``data=full_reviews``...).
    overrides: list[str] = field(default_factory=list)
    #: Where the stage's model starts: ``base`` (the configured base model), ``previous`` (the export of the stage
    #: before it) or the name of any earlier stage (its export).
    init: str = "previous"


@dataclass
class _CoreConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)


#: The whole composition of one job: the core nodes, one node per technique family of
#: :data:`tessera.core.techniques.FAMILIES` (its selected techniques by name, in config order), the stages of a
#: multi-stage job (empty for a single run, run in order in ``<run>/stages/<name>/``), and ``resume`` (continue
#: from the run directory's checkpoints: use with ``hydra.run.dir=<that run>``).
TesseraConfig = make_dataclass(
    "TesseraConfig",
    [
        *((family, dict[str, Any], field(default_factory=dict)) for family in CONFIG_FAMILIES),
        ("stages", list[StageConfig], field(default_factory=list)),
        ("resume", bool, False),
    ],
    bases=(_CoreConfig,),
)
# Importable by name (make_dataclass on Python 3.11 files it under ``types``): pickled by reference, the schema crosses
# to a launcher's worker processes and back without cloudpickle rebuilding the class, which replaced the fields'
# ``dataclasses.MISSING`` sentinels with copies and broke every later ``store_schema`` in the process.
TesseraConfig.__module__ = __name__


def store_schema() -> None:
    """Register the schema in Hydra's ConfigStore as ``tessera_schema``, and the default technique of every
    family as ``tessera_families`` (the first two entries of ``conf/config.yaml``'s defaults list)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="tessera_schema", node=TesseraConfig, provider="tessera")
    defaults = [{family: FAMILIES[family].default} for family in CONFIG_FAMILIES]
    store.store(name="tessera_families", node={"defaults": defaults}, provider="tessera")
