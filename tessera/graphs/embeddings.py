"""Knowledge-graph embeddings: TransE, DistMult, ComplEx and RotatE from ``torch_geometric.nn.kge``, trained with
negative sampling and evaluated with filtered rank-based link-prediction metrics as PyKEEN reports them.

TransE scores entity rows normalised to unit L2 norm with an L1 distance (the TransE paper's constraint and
PyKEEN's; torch_geometric normalises them to unit L1 norm, which bounds every distance by ``2 + |r|`` and leaves
WordNet unlearnt, see :func:`_unit_transe`). ``init`` draws the entity tables: RotatE's default is uniform in
``[-0.5, 0.5]`` (:data:`DEFAULT_INIT`), the other models keep torch_geometric's.

Training (stochastic local closed world, as PyKEEN's sLCWA): each positive triple of the training split is
paired with ``negatives`` corruptions (its head or its tail, with equal chance, replaced by a uniformly drawn
entity). The loss defaults to each model's PyKEEN default: a margin ranking loss (margin 1) for TransE, DistMult
and RotatE, the softplus loss for ComplEx; ``nssa`` is RotatE's self-adversarial negative sampling loss
(``-log sigmoid(margin - d(positive)) - sum_i p_i log sigmoid(d(negative_i) - margin)``, the weights ``p`` a softmax
of the negatives' scores at ``adversarial_temperature``, not differentiated). Optimiser: Adam; on graphs of more
than :data:`SPARSE_ABOVE` entities (WordNet) the embedding tables take sparse gradients and lazy Adam
(``SparseAdam``), which updates only the rows a batch touches: an epoch of WordNet then costs seconds instead of a
minute.

Validation (``evaluate_every`` N > 0): every N epochs (and after the last) the model is evaluated on
``validation_split``; the state with the best validation MRR is kept and restored at the end, so the embeddings
and the test metrics are those of the best epoch. ``patience`` P > 0 stops training after P evaluations in a row
without a better validation MRR.

Evaluation: :mod:`tessera.graphs.link_prediction` (filtered realistic ranks as PyKEEN reports them, MR, MRR and
Hits@1/3/10, in blocks of at most ``eval_batch_size`` scores).

``encoder=rgcn`` puts an R-GCN (``torch_geometric.nn.RGCNConv``, relations and their inverses, residual) over
the entity embeddings of the training graph; the KGE model then scores with the encoded embeddings.

Small jobs run with one torch thread (``threads=1``): on 2 cores, two threads thrash and can be 10x slower.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tessera.graphs.link_prediction import LinkPredictionEvaluator, candidate_scores, query_vectors
from tessera.graphs.store import GraphError, KnowledgeGraph

#: Model name -> (torch_geometric.nn.kge class name, PyKEEN's default loss).
MODELS = {
    "transe": ("TransE", "margin"),
    "distmult": ("DistMult", "margin"),
    "complex": ("ComplEx", "softplus"),
    "rotate": ("RotatE", "margin"),
}
LOSSES = ("margin", "softplus", "nssa")
#: The entity initialisation of ``init=default`` where it is not torch_geometric's (see :class:`KGEConfig`): RotatE
#: (dim 128, 256 shared negatives, lr 0.01) reached a validation MRR of 0.47 on ``wn18rr:mirrored`` after 6 epochs
#: from uniform(-0.5, 0.5) and 0.29 from torch_geometric's Xavier uniform, whose bound on 113k entities is 0.007.
DEFAULT_INIT = {"rotate": "uniform:0.5"}
SAMPLINGS = ("auto", "triple", "shared")
ENCODERS = ("none", "rgcn")
#: Graphs with more entities than this train with sparse embedding gradients (see the module docstring).
SPARSE_ABOVE = 10_000
EMBEDDINGS_FORMAT = 1


@dataclass
class KGEConfig:
    """How to train knowledge-graph embeddings (``tessera kg embed`` flags of the same names)."""

    model: str = "transe"
    dim: int = 64
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 0.01
    #: Corrupted triples per positive (``sampling=shared``: corrupting entities per batch).
    negatives: int = 1
    #: ``triple`` (each positive its own corruptions), ``shared`` (one draw per batch, scored as matrix products)
    #: or ``auto`` (``shared`` on graphs of more than :data:`SPARSE_ABOVE` entities without an encoder).
    sampling: str = "auto"
    #: ``default`` (the model's PyKEEN default), ``margin``, ``softplus`` or ``nssa`` (self-adversarial).
    loss: str = "default"
    #: The margin of the margin ranking loss, and RotatE's (and the ``nssa`` loss's) margin gamma.
    margin: float = 1.0
    #: The softmax temperature alpha of the ``nssa`` loss's weights over the negatives.
    adversarial_temperature: float = 1.0
    encoder: str = "none"
    rgcn_layers: int = 1
    #: Basis decomposition of the R-GCN relation weights (0: none).
    rgcn_bases: int = 0
    #: The entity tables' initialisation: ``default`` (:data:`DEFAULT_INIT`: ``uniform:0.5`` for RotatE,
    #: ``pyg`` for the others), ``pyg`` (torch_geometric's own: Xavier uniform, TransE's uniform in
    #: ``6 / sqrt(dim)``) or ``uniform:B`` (uniform in ``[-B, B]``). Relations keep torch_geometric's.
    init: str = "default"
    #: The split to train on; ``all`` when the graph has no splits.
    train_split: str = "train"
    seed: int = 0
    threads: int = 1
    #: Evaluate on ``validation_split`` every this many epochs and keep the best state (0: never).
    evaluate_every: int = 0
    #: Stop after this many validations in a row without a better MRR (0: train every epoch).
    patience: int = 0
    validation_split: str = "valid"
    #: Scores per evaluation block (0: automatic from the memory available).
    eval_batch_size: int = 0

    def check(self) -> None:
        """Raise :class:`GraphError` for an unknown model, loss or encoder, or a non-positive size."""
        for value, valid, what in (
            (self.model, MODELS, "model"),
            (self.encoder, ENCODERS, "encoder"),
            (self.loss, ("default", *LOSSES), "loss"),
            (self.sampling, SAMPLINGS, "sampling"),
        ):
            if value not in valid:
                raise GraphError(f"unknown KGE {what} {value!r}: choose one of {', '.join(valid)}")
        if min(self.dim, self.epochs, self.batch_size, self.negatives, self.threads) < 1:
            raise GraphError("dim, epochs, batch_size, negatives and threads must be at least 1")
        if min(self.evaluate_every, self.patience, self.eval_batch_size) < 0:
            raise GraphError("evaluate_every, patience and eval_batch_size must be 0 (off / automatic) or more")
        if self.sampling == "shared" and self.encoder != "none":
            raise GraphError("sampling=shared scores raw embedding rows: use sampling=triple with an encoder")
        self.init_bound()
        if self.patience and not self.evaluate_every:
            raise GraphError("patience needs evaluate_every: early stopping watches the validation MRR")

    def init_bound(self) -> float | None:
        """The bound B of a ``uniform:B`` initialisation (None: torch_geometric's); refuses a malformed ``init``."""
        init = DEFAULT_INIT.get(self.model, "pyg") if self.init == "default" else self.init
        if init == "pyg":
            return None
        kind, _, bound = init.partition(":")
        try:
            value = float(bound)
        except ValueError:
            value = 0.0
        if kind != "uniform" or not value > 0:
            raise GraphError(f"unknown KGE init {self.init!r}: choose default, pyg or uniform:B with a bound B > 0")
        return value

    @property
    def loss_name(self) -> str:
        return MODELS[self.model][1] if self.loss == "default" else self.loss

    def digest(self) -> str:
        """A short hash of every setting (names the cached embeddings)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainedEmbeddings:
    """Entity and relation embeddings (real matrices; complex models concatenate real and imaginary parts)."""

    graph: str
    config: KGEConfig
    entities: np.ndarray
    relations: np.ndarray
    metrics: dict
    seconds: float

    def save(self, path: Path) -> Path:
        """Write ``path`` (a ``.npz`` with the matrices and a JSON header), atomically."""
        import io

        from tessera.core.files import write_text

        path = Path(path)
        header = {
            "format": EMBEDDINGS_FORMAT,
            "graph": self.graph,
            "config": asdict(self.config),
            "metrics": self.metrics,
            "seconds": self.seconds,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            entities=self.entities,
            relations=self.relations,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        )
        partial = path.with_name(f".{path.name}.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(buffer.getvalue())
        partial.replace(path)
        write_text(path.with_suffix(".json"), json.dumps(header, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> TrainedEmbeddings:
        """Read embeddings written by :meth:`save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                header = json.loads(data["header"].tobytes().decode())
                entities, relations = data["entities"], data["relations"]
        except (OSError, KeyError, ValueError) as error:
            raise GraphError(f"{path} is not an embeddings file written by `tessera kg embed` ({error})") from None
        return cls(
            header["graph"], KGEConfig(**header["config"]), entities, relations, header["metrics"], header["seconds"]
        )


class _Scorer:
    """A ``torch_geometric.nn.kge`` model, optionally over an R-GCN encoder of the entity embeddings."""

    def __init__(self, graph: KnowledgeGraph, train: np.ndarray, config: KGEConfig):
        import torch
        from torch_geometric.nn import kge

        #: Sparse gradients for the tables of a large graph trained without an encoder.
        self.sparse = graph.num_entities > SPARSE_ABOVE and config.encoder == "none"
        #: The model's name in :data:`MODELS` (the evaluation scores candidates with its formula).
        self.name = config.model
        extra = {"margin": config.margin} if config.model == "rotate" else {}
        model_class = _unit_transe() if config.model == "transe" else getattr(kge, MODELS[config.model][0])
        self.model = model_class(graph.num_entities, graph.num_relations, config.dim, sparse=self.sparse, **extra)
        self.entity_tables = [name for name in ("node_emb", "node_emb_im") if hasattr(self.model, name)]
        self.relation_tables = [name for name in ("rel_emb", "rel_emb_im") if hasattr(self.model, name)]
        _initialise(self.model, self.entity_tables, config)
        #: The model's score settings that the candidate formulas need (RotatE's margin, TransE's distance norm and
        #: the norm its entity rows are normalised to).
        self.margin = float(getattr(self.model, "margin", 0.0))
        self.p_norm = getattr(self.model, "p_norm", 1.0)
        self.entity_norm = getattr(self.model, "entity_norm", None)
        #: Negatives shared by a batch (see :class:`KGEConfig`'s ``sampling``).
        self.shared = config.sampling == "shared" or (config.sampling == "auto" and self.sparse)
        self.encoder = None
        if config.encoder == "rgcn":
            from torch_geometric.nn import RGCNConv

            width = config.dim * len(self.entity_tables)
            self.encoder = torch.nn.ModuleList(
                RGCNConv(width, width, 2 * graph.num_relations, num_bases=config.rgcn_bases or None)
                for _ in range(config.rgcn_layers)
            )
            heads, relations, tails = (torch.as_tensor(train[:, i], dtype=torch.long) for i in range(3))
            self.edge_index = torch.stack([torch.cat([heads, tails]), torch.cat([tails, heads])])
            self.edge_type = torch.cat([relations, relations + graph.num_relations])

    def parameters(self):
        yield from self.model.parameters()
        if self.encoder is not None:
            yield from self.encoder.parameters()

    def entity_matrix(self):
        """The entity embeddings the model scores with (encoded when there is an encoder), tables concatenated."""
        import torch

        x = torch.cat([getattr(self.model, name).weight for name in self.entity_tables], dim=-1)
        if self.encoder is None:
            return x
        for layer, conv in enumerate(self.encoder):
            update = conv(x, self.edge_index, self.edge_type)
            x = x + (torch.relu(update) if layer < len(self.encoder) - 1 else update)
        return x

    def score(self, heads, relations, tails, entities=None):
        """Scores of the triples; ``entities`` is a precomputed :meth:`entity_matrix` (needed with an encoder)."""
        from torch.func import functional_call

        if self.encoder is None:
            return self.model(heads, relations, tails)
        entities = self.entity_matrix() if entities is None else entities
        tables = dict(
            zip((f"{name}.weight" for name in self.entity_tables), entities.chunk(len(self.entity_tables), dim=-1))
        )
        return functional_call(self.model, tables, (heads, relations, tails))

    def relation_matrix(self):
        import torch

        return torch.cat([getattr(self.model, name).weight for name in self.relation_tables], dim=-1)

    def entity_rows(self, ids):
        """The rows ``ids`` of the entity tables, concatenated as :meth:`entity_matrix` (no encoder), gathered so
        that the gradient is sparse when the tables' is."""
        return self._rows(self.entity_tables, ids)

    def relation_rows(self, ids):
        return self._rows(self.relation_tables, ids)

    def _rows(self, tables, ids):
        import torch
        import torch.nn.functional as F

        return torch.cat(
            [F.embedding(ids, getattr(self.model, name).weight, sparse=self.sparse) for name in tables], -1
        )


def _initialise(model, entity_tables: list[str], config: KGEConfig) -> None:
    """Draw the entity tables again as ``config.init`` says (nothing for ``pyg``)."""
    import torch

    bound = config.init_bound()
    if bound is None:
        return
    with torch.no_grad():
        for name in entity_tables:
            getattr(model, name).weight.uniform_(-bound, bound)


def _unit_transe():
    """``torch_geometric.nn.kge.TransE`` with the entity constraint of the TransE paper and PyKEEN: entity rows
    normalised to unit L2 norm before scoring, relations initialised at unit L2 norm, the distance still L1.

    PyG normalises entities and relations to unit *L1* norm (its ``p_norm``, the distance's): every entity
    difference is then at most 2 in L1, so the scores of all candidates differ by less than a margin of 1 (or the
    ``nssa`` loss's 6), and on WordNet the relation vectors, each updated by every batch, outgrow the entity rows,
    each updated a few times an epoch, until every candidate scores alike (test MRR 0.002-0.004, a random ranking's,
    after 2 epochs). With unit L2 rows the distances span 0 to about ``2 sqrt(dim)``, PyKEEN's scale."""
    import math

    import torch
    import torch.nn.functional as F
    from torch_geometric.nn.kge import TransE

    class UnitTransE(TransE):
        #: The norm the entity rows are normalised to (the scorer's candidate formulas read it).
        entity_norm = 2.0

        def reset_parameters(self):
            bound = 6.0 / math.sqrt(self.hidden_channels)
            torch.nn.init.uniform_(self.node_emb.weight, -bound, bound)
            torch.nn.init.uniform_(self.rel_emb.weight, -bound, bound)
            F.normalize(self.rel_emb.weight.data, p=self.entity_norm, dim=-1, out=self.rel_emb.weight.data)

        def forward(self, head_index, rel_type, tail_index):
            head = F.normalize(self.node_emb(head_index), p=self.entity_norm, dim=-1)
            tail = F.normalize(self.node_emb(tail_index), p=self.entity_norm, dim=-1)
            return -(head + self.rel_emb(rel_type) - tail).norm(p=self.p_norm, dim=-1)

    return UnitTransE


def _threads(count: int):
    """A context that sets torch's intra-op threads and restores them."""
    from contextlib import contextmanager

    import torch

    @contextmanager
    def context():
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    return context()


def train_embeddings(
    graph: KnowledgeGraph,
    config: KGEConfig | None = None,
    evaluate: str | None = "test",
    log=None,
    progress: bool = False,
) -> TrainedEmbeddings:
    """Train ``config.model`` on the training split of ``graph`` (validating on ``config.validation_split`` every
    ``config.evaluate_every`` epochs, see the module docstring); evaluate on split ``evaluate`` (None: skip).

    ``log`` (a callable) receives a line per tenth of the epochs and one per validation; ``progress`` shows a
    progress bar on stderr while an evaluation runs.
    """
    import torch

    config = config or KGEConfig()
    config.check()
    split = config.train_split if graph.splits or config.train_split == "all" else "all"
    train = graph.split(split)
    if not len(train):
        raise GraphError(f"graph {graph.name} has no training triples in split {split!r}")
    validator = (
        LinkPredictionEvaluator(graph, config.validation_split, config.eval_batch_size)
        if config.evaluate_every
        else None
    )
    tester = LinkPredictionEvaluator(graph, evaluate, config.eval_batch_size) if evaluate else None
    with _threads(config.threads):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        scorer = _Scorer(graph, train, config)
        optimizer = (torch.optim.SparseAdam if scorer.sparse else torch.optim.Adam)(
            list(scorer.parameters()), lr=config.learning_rate
        )
        triples = torch.as_tensor(train, dtype=torch.long)
        validation = _Validation(config)
        seconds = 0.0
        for epoch in range(1, config.epochs + 1):
            started, total = time.perf_counter(), 0.0
            for batch in torch.randperm(len(triples), generator=generator).split(config.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = _batch_loss(scorer, triples[batch], graph.num_entities, config, generator)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            seconds += time.perf_counter() - started
            if log and epoch % max(1, config.epochs // 10) == 0:
                log(f"epoch {epoch}/{config.epochs}: loss {total / len(triples):.4f}")
            if validator and (epoch % config.evaluate_every == 0 or epoch == config.epochs):
                metrics = validator.evaluate(scorer, progress)
                validation.record(epoch, metrics, scorer)
                if log:
                    log(
                        f"epoch {epoch}: {validator.split} MRR {metrics['both']['mrr']:.4f} (best {validation.summary()})"
                    )
                if validation.stopped:
                    if log:
                        log(f"no better validation MRR for {config.patience} validations: stopped after epoch {epoch}")
                    break
        validation.restore(scorer)
        metrics = tester.evaluate(scorer, progress) if tester else {}
        if validator:
            metrics["validation"] = validation.report()
        with torch.no_grad():
            entities = scorer.entity_matrix().numpy().astype(np.float32)
            relations = scorer.relation_matrix().numpy().astype(np.float32)
    return TrainedEmbeddings(graph.name, config, entities, relations, metrics, seconds)


class _Validation:
    """The validation history, the best state (a copy of the parameters) and the early-stopping decision."""

    def __init__(self, config: KGEConfig):
        self.patience = config.patience
        self.history: list[dict] = []
        self.best_state = None
        self.best_epoch, self.best_mrr, self.stale, self.stopped = 0, -1.0, 0, False
        self.seconds = 0.0

    def record(self, epoch: int, metrics: dict, scorer) -> None:
        """Note the validation of ``epoch``: keep the state when its MRR is the best so far, stop after
        ``patience`` validations in a row without a better one."""
        mrr = metrics["both"]["mrr"]
        self.seconds += metrics["seconds"]
        self.history.append({"epoch": epoch, "mrr": mrr, "hits_at_10": metrics["both"]["hits_at_10"]})
        if mrr > self.best_mrr:
            self.best_epoch, self.best_mrr, self.stale = epoch, mrr, 0
            self.best_state = [parameter.detach().clone() for parameter in scorer.parameters()]
        else:
            self.stale += 1
            self.stopped = bool(self.patience) and self.stale >= self.patience

    def summary(self) -> str:
        return f"{self.best_mrr:.4f} at epoch {self.best_epoch}"

    def restore(self, scorer) -> None:
        """Put the best validated parameters back (nothing when there was no validation)."""
        import torch

        if self.best_state is None:
            return
        with torch.no_grad():
            for parameter, best in zip(scorer.parameters(), self.best_state):
                parameter.copy_(best)

    def report(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_mrr": self.best_mrr,
            "epochs_trained": self.history[-1]["epoch"] if self.history else 0,
            "stopped_early": self.stopped,
            "seconds": round(self.seconds, 3),
            "history": self.history,
        }


def _batch_loss(scorer: _Scorer, positives, num_entities: int, config: KGEConfig, generator):
    sample = _shared_scores if scorer.shared else _triple_scores
    positive, negative = sample(scorer, positives, num_entities, config, generator)
    return _loss(config, positive, negative)


def _triple_scores(scorer: _Scorer, positives, num_entities: int, config: KGEConfig, generator):
    """Scores of the positives and of ``negatives`` corruptions of each (its head or its tail, with equal chance,
    replaced by a uniformly drawn entity): ``(batch,)`` and ``(batch, negatives)``."""
    import torch

    entities = scorer.entity_matrix() if scorer.encoder is not None else None
    heads, relations, tails = positives.unbind(dim=1)
    negatives = positives.repeat_interleave(config.negatives, dim=0)
    corrupt_head = torch.rand(len(negatives), generator=generator) < 0.5
    replacement = torch.randint(num_entities, (len(negatives),), generator=generator)
    negatives[:, 0] = torch.where(corrupt_head, replacement, negatives[:, 0])
    negatives[:, 2] = torch.where(corrupt_head, negatives[:, 2], replacement)
    positive = scorer.score(heads, relations, tails, entities)
    negative = scorer.score(negatives[:, 0], negatives[:, 1], negatives[:, 2], entities).view(-1, config.negatives)
    return positive, negative


def _shared_scores(scorer: _Scorer, positives, num_entities: int, config: KGEConfig, generator):
    """Scores of the positives and of ``negatives`` uniformly drawn entities shared by the whole batch, each put in
    place of the tail of the first half of the batch's triples and of the head of the other half, scored as one
    matrix product per side (the scorer's evaluation formula, :func:`candidate_scores`)."""
    import torch

    heads, relations, tails = positives.unbind(dim=1)
    candidates = torch.randint(num_entities, (config.negatives,), generator=generator)
    size, half = len(positives), len(positives) // 2
    margin, p_norm = scorer.margin, scorer.p_norm
    rows = scorer.entity_rows(torch.cat([heads, tails, candidates]))
    if scorer.entity_norm:  # TransE scores normalised entity rows
        rows = torch.nn.functional.normalize(rows, p=scorer.entity_norm, dim=-1)
    head_rows, tail_rows, candidate_rows = rows.split([size, size, config.negatives])
    relation_rows = scorer.relation_rows(relations)
    queries = torch.cat(
        [
            query_vectors(scorer.name, head_rows[:half], relation_rows[:half], "tail"),
            query_vectors(scorer.name, tail_rows[half:], relation_rows[half:], "head"),
        ]
    )
    positive = scorer.score(heads, relations, tails)
    return positive, candidate_scores(scorer.name, queries, candidate_rows, margin, p_norm)


def _loss(config: KGEConfig, positive, negative):
    """The training loss of ``(batch,)`` positive and ``(batch, negatives)`` negative scores."""
    import torch
    import torch.nn.functional as F

    if config.loss_name == "margin":
        return F.relu(config.margin - positive.unsqueeze(1) + negative).mean()
    if config.loss_name == "nssa":
        # TransE scores -distance, RotatE margin - distance (its margin is config.margin): both become margin - d.
        offset = config.margin if config.model == "transe" else 0.0
        positive, negative = positive + offset, negative + offset
        weights = torch.softmax(negative.detach() * config.adversarial_temperature, dim=1)
        positive_loss = -F.logsigmoid(positive).mean()
        negative_loss = -(weights * F.logsigmoid(-negative)).sum(dim=1).mean()
        return (positive_loss + negative_loss) / 2
    scores = torch.cat([positive, negative.reshape(-1)])
    labels = torch.cat([torch.ones_like(positive), -torch.ones_like(negative.reshape(-1))])
    return F.softplus(-labels * scores).mean()


def link_prediction(
    scorer: _Scorer, graph: KnowledgeGraph, split: str, eval_batch_size: int = 0, progress: bool = False
) -> dict:
    """Filtered rank-based metrics of ``scorer`` on ``split``, both directions, in blocks of at most
    ``eval_batch_size`` scores (0: automatic); see :mod:`tessera.graphs.link_prediction`."""
    return LinkPredictionEvaluator(graph, split, eval_batch_size).evaluate(scorer, progress)


def embeddings_path(source: str, config: KGEConfig, plugins) -> Path:
    """Where the embeddings of graph ``source`` (a loader of ``plugins``) trained with ``config`` are cached."""
    from tessera.graphs.loaders import cache_dir, resolve

    return cache_dir(resolve(source, plugins)) / f"kge-{config.model}-{config.dim}-{config.digest()}.npz"


def cached_embeddings(source: str, config: KGEConfig, plugins, log=None) -> TrainedEmbeddings:
    """The embeddings of graph ``source`` under ``config``: read from the cache, or trained (no evaluation on
    graphs without splits) and cached."""
    from tessera.graphs.loaders import load_graph

    path = embeddings_path(source, config, plugins)
    if path.is_file():
        return TrainedEmbeddings.load(path)
    graph = load_graph(source, plugins)
    trained = train_embeddings(graph, config, evaluate="test" if "test" in graph.splits else None, log=log)
    trained.save(path)
    return trained
