"""Knowledge-graph embeddings: TransE, DistMult, ComplEx and RotatE from ``torch_geometric.nn.kge``, trained with
negative sampling and evaluated with filtered rank-based link-prediction metrics as PyKEEN reports them.

Training (stochastic local closed world, as PyKEEN's sLCWA): each positive triple of the training split is
paired with ``negatives`` corruptions (its head or its tail, with equal chance, replaced by a uniformly drawn
entity). The loss defaults to each model's PyKEEN default: a margin ranking loss (margin 1) for TransE, DistMult
and RotatE, the softplus loss for ComplEx. Optimiser: Adam; on graphs of more than :data:`SPARSE_ABOVE` entities
(WordNet) the embedding tables take sparse gradients and lazy Adam (``SparseAdam``), which updates only the rows a
batch touches: an epoch of WordNet then costs seconds instead of a minute.

Evaluation: for each test triple the head and the tail are ranked in turn against every entity, *filtered*
(other true triples of any split are removed from the candidates). The rank is PyKEEN's *realistic* rank, the
mean of the optimistic and pessimistic ranks, so ties are neither rewarded nor punished. Reported, for
``both`` sides together and for ``head`` / ``tail`` alone: MR (mean rank), MRR (mean reciprocal rank) and
Hits@1/3/10.

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

from tessera.graphs.store import GraphError, KnowledgeGraph

#: Model name -> (torch_geometric.nn.kge class name, PyKEEN's default loss).
MODELS = {
    "transe": ("TransE", "margin"),
    "distmult": ("DistMult", "margin"),
    "complex": ("ComplEx", "softplus"),
    "rotate": ("RotatE", "margin"),
}
LOSSES = ("margin", "softplus")
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
    #: Corrupted triples per positive.
    negatives: int = 1
    #: ``default`` (the model's PyKEEN default), ``margin`` or ``softplus``.
    loss: str = "default"
    margin: float = 1.0
    encoder: str = "none"
    rgcn_layers: int = 1
    #: Basis decomposition of the R-GCN relation weights (0: none).
    rgcn_bases: int = 0
    #: The split to train on; ``all`` when the graph has no splits.
    train_split: str = "train"
    seed: int = 0
    threads: int = 1

    def check(self) -> None:
        """Raise :class:`GraphError` for an unknown model, loss or encoder, or a non-positive size."""
        for value, valid, what in (
            (self.model, MODELS, "model"),
            (self.encoder, ENCODERS, "encoder"),
            (self.loss, ("default", *LOSSES), "loss"),
        ):
            if value not in valid:
                raise GraphError(f"unknown KGE {what} {value!r}: choose one of {', '.join(valid)}")
        if min(self.dim, self.epochs, self.batch_size, self.negatives, self.threads) < 1:
            raise GraphError("dim, epochs, batch_size, negatives and threads must be at least 1")

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
        self.model = getattr(kge, MODELS[config.model][0])(
            graph.num_entities, graph.num_relations, config.dim, sparse=self.sparse
        )
        self.entity_tables = [name for name in ("node_emb", "node_emb_im") if hasattr(self.model, name)]
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

        tables = [getattr(self.model, name).weight for name in ("rel_emb", "rel_emb_im") if hasattr(self.model, name)]
        return torch.cat(tables, dim=-1)


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
    graph: KnowledgeGraph, config: KGEConfig | None = None, evaluate: str | None = "test", log=None
) -> TrainedEmbeddings:
    """Train ``config.model`` on the training split of ``graph``; evaluate on split ``evaluate`` (None: skip).

    ``log`` (a callable) receives a line per tenth of the epochs.
    """
    import torch

    config = config or KGEConfig()
    config.check()
    split = config.train_split if graph.splits or config.train_split == "all" else "all"
    train = graph.split(split)
    if not len(train):
        raise GraphError(f"graph {graph.name} has no training triples in split {split!r}")
    with _threads(config.threads):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        scorer = _Scorer(graph, train, config)
        optimizer = (torch.optim.SparseAdam if scorer.sparse else torch.optim.Adam)(
            list(scorer.parameters()), lr=config.learning_rate
        )
        triples = torch.as_tensor(train, dtype=torch.long)
        started = time.perf_counter()
        for epoch in range(config.epochs):
            total = 0.0
            for batch in torch.randperm(len(triples), generator=generator).split(config.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = _batch_loss(scorer, triples[batch], graph.num_entities, config, generator)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            if log and (epoch + 1) % max(1, config.epochs // 10) == 0:
                log(f"epoch {epoch + 1}/{config.epochs}: loss {total / len(triples):.4f}")
        seconds = time.perf_counter() - started
        with torch.no_grad():
            metrics = link_prediction(scorer, graph, evaluate) if evaluate else {}
            entities = scorer.entity_matrix().numpy().astype(np.float32)
            relations = scorer.relation_matrix().numpy().astype(np.float32)
    return TrainedEmbeddings(graph.name, config, entities, relations, metrics, seconds)


def _batch_loss(scorer: _Scorer, positives, num_entities: int, config: KGEConfig, generator):
    import torch
    import torch.nn.functional as F

    entities = scorer.entity_matrix() if scorer.encoder is not None else None
    heads, relations, tails = positives.unbind(dim=1)
    negatives = positives.repeat_interleave(config.negatives, dim=0)
    corrupt_head = torch.rand(len(negatives), generator=generator) < 0.5
    replacement = torch.randint(num_entities, (len(negatives),), generator=generator)
    negatives[:, 0] = torch.where(corrupt_head, replacement, negatives[:, 0])
    negatives[:, 2] = torch.where(corrupt_head, negatives[:, 2], replacement)
    positive = scorer.score(heads, relations, tails, entities)
    negative = scorer.score(negatives[:, 0], negatives[:, 1], negatives[:, 2], entities).view(-1, config.negatives)
    if config.loss_name == "margin":
        return F.relu(config.margin - positive.unsqueeze(1) + negative).mean()
    scores = torch.cat([positive, negative.reshape(-1)])
    labels = torch.cat([torch.ones_like(positive), -torch.ones_like(negative.reshape(-1))])
    return F.softplus(-labels * scores).mean()


def link_prediction(scorer: _Scorer, graph: KnowledgeGraph, split: str, batch_size: int = 64) -> dict:
    """Filtered rank-based metrics on ``split`` (see the module docstring), both directions."""
    import torch

    test = graph.split(split)
    if not len(test):
        raise GraphError(f"graph {graph.name} has no triples in split {split!r} to evaluate")
    known_tails, known_heads = _known(graph.triples)
    entities = scorer.entity_matrix() if scorer.encoder is not None else None
    candidates = torch.arange(graph.num_entities)
    ranks = {"head": [], "tail": []}
    for start in range(0, len(test), batch_size):
        batch = torch.as_tensor(test[start : start + batch_size], dtype=torch.long)
        size = len(batch)
        for side, column in (("head", 0), ("tail", 2)):
            query = batch.repeat_interleave(graph.num_entities, dim=0)
            query[:, column] = candidates.repeat(size)
            scores = scorer.score(query[:, 0], query[:, 1], query[:, 2], entities).view(size, -1).double()
            for row, (h, r, t) in enumerate(batch.tolist()):
                true = h if side == "head" else t
                others = (known_heads[(r, t)] if side == "head" else known_tails[(h, r)]) - {true}
                if others:
                    scores[row, list(others)] = float("-inf")
            true_index = batch[:, column]
            true_scores = scores.gather(1, true_index.unsqueeze(1))
            optimistic = 1 + (scores > true_scores).sum(dim=1)
            pessimistic = (scores >= true_scores).sum(dim=1)
            ranks[side].append(((optimistic + pessimistic) / 2.0).numpy())
    head, tail = np.concatenate(ranks["head"]), np.concatenate(ranks["tail"])
    return {
        "both": _rank_metrics(np.concatenate([head, tail])),
        "head": _rank_metrics(head),
        "tail": _rank_metrics(tail),
        "triples": int(len(test)),
        "split": split,
    }


def _known(triples: np.ndarray) -> tuple[dict, dict]:
    """``{(head, relation): {tails}}`` and ``{(relation, tail): {heads}}`` over all triples (the filter)."""
    tails, heads = {}, {}
    for h, r, t in triples.tolist():
        tails.setdefault((h, r), set()).add(t)
        heads.setdefault((r, t), set()).add(h)
    return tails, heads


def _rank_metrics(ranks: np.ndarray) -> dict:
    return {
        "mr": float(ranks.mean()),
        "mrr": float((1.0 / ranks).mean()),
        **{f"hits_at_{k}": float((ranks <= k).mean()) for k in (1, 3, 10)},
    }


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
