"""Filtered rank-based link prediction (PyKEEN's evaluator), in blocks whose memory is bounded by a budget.

For each evaluation triple ``(h, r, t)`` the tail is ranked against every entity as ``(h, r, ?)`` and the head as
``(?, r, t)``, *filtered*: the other true triples of any split are removed from the candidates. The rank is the
*realistic* one, the mean of the optimistic rank (``1 +`` candidates scoring higher) and the pessimistic rank
(``1 +`` candidates scoring at least as high), so ties are neither rewarded nor punished.

Scores come in blocks of ``rows`` evaluation triples x ``chunk`` candidate entities, never more than the budget
``eval_batch_size`` (scores per block; ``0``: automatic, :func:`automatic_batch_size`). A block's cost is about
:data:`BYTES_PER_SCORE` bytes per score, so evaluation takes ``eval_batch_size x BYTES_PER_SCORE`` bytes beyond the
embeddings whatever the graph's size, and the ranks do not depend on the block sizes: each rank is the sum of the
counts over the entity chunks. Each model scores a query against a block of candidates with its own formula,
vectorised (a distance or a matrix product against the candidate table), in float64 except TransE's L1 distance.
"""

from __future__ import annotations

import time

import numpy as np

from tessera.graphs.store import GraphError, GraphTooLargeError, KnowledgeGraph, available_memory

#: Peak bytes of one candidate score while a block is ranked (float64 scores, the distance's temporaries and the
#: comparison masks), measured on WordNet with RotatE.
BYTES_PER_SCORE = 40
#: The automatic budget: this share of the available memory, at most :data:`AUTOMATIC_MAX_SCORES` scores.
AUTOMATIC_MEMORY_SHARE = 0.1
AUTOMATIC_MAX_SCORES = 1 << 23


def automatic_batch_size() -> int:
    """Scores per block when ``eval_batch_size`` is 0: a tenth of the memory available (``MemAvailable`` or
    ``$TESSERA_KG_MEMORY_BYTES``, the budget of the store's ``check_memory``), at most 8,388,608 scores (about
    335 MB)."""
    return max(1, min(int(available_memory() * AUTOMATIC_MEMORY_SHARE) // BYTES_PER_SCORE, AUTOMATIC_MAX_SCORES))


def check_batch_size(eval_batch_size: int) -> None:
    """Refuse a budget of scores per block that would not fit in the memory available."""
    needed = eval_batch_size * BYTES_PER_SCORE
    if needed > available_memory():
        raise GraphTooLargeError(
            f"evaluation blocks of {eval_batch_size:,} scores x {BYTES_PER_SCORE} bytes = {needed / 1e9:.2f} GB, more "
            f"than the {available_memory() / 1e9:.2f} GB available: lower --eval-batch-size (0 chooses it)"
        )


class CandidateScores:
    """The scores of queries ``(anchor, relation, ?)`` or ``(?, relation, anchor)`` against blocks of candidate
    entities, with the formula of the ``torch_geometric.nn.kge`` model of ``scorer`` (TransE, DistMult, ComplEx,
    RotatE, named by ``scorer.name``) on its entity and relation tables (the encoded entities when there is an
    encoder)."""

    def __init__(self, scorer):
        import torch.nn.functional as F

        self.model = model = scorer.name
        self.margin, self.p_norm = scorer.margin, scorer.p_norm
        entities = scorer.entity_matrix().detach()
        self.relations = scorer.relation_matrix().detach().double()
        if model == "transe":
            self.entities = F.normalize(entities, p=scorer.entity_norm, dim=-1)
            self.relations = self.relations.float()
        else:
            self.entities = entities.double()
        if model == "rotate":
            self.squared_norms = (self.entities * self.entities).sum(dim=1)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    def queries(self, anchors, relations, side: str):
        """One query vector per triple: ``side="tail"`` ranks tails of ``(anchor, relation, ?)``, ``"head"`` heads
        of ``(?, relation, anchor)``."""
        return query_vectors(self.model, self.entities[anchors], self.relations[relations], side)

    def against(self, queries, candidates):
        """``(len(queries), len(candidates))`` float64 scores; ``candidates`` is a slice or an index tensor."""
        norms = self.squared_norms[candidates] if self.model == "rotate" else None
        scores = candidate_scores(self.model, queries, self.entities[candidates], self.margin, self.p_norm, norms)
        return scores.double()


def query_vectors(model: str, anchors, relations, side: str):
    """The query vectors of ``model`` (a name of :data:`tessera.graphs.embeddings.MODELS`) for anchor entity rows and
    relation rows (the tables' layouts: complex models' real then imaginary halves, RotatE's phases): ``side="tail"``
    for ``(anchor, relation, ?)``, ``"head"`` for ``(?, relation, anchor)``. :func:`candidate_scores` scores them."""
    import torch

    a, r = anchors, relations
    if model == "transe":
        return a + r if side == "tail" else a - r
    if model == "distmult":
        return a * r
    half = a.shape[1] // 2
    a_re, a_im = a[:, :half], a[:, half:]
    if model == "complex":
        r_re, r_im = r[:, :half], r[:, half:]
        if side == "tail":
            return torch.cat([a_re * r_re - a_im * r_im, a_im * r_re + a_re * r_im], dim=1)
        return torch.cat([r_re * a_re + r_im * a_im, r_re * a_im - r_im * a_re], dim=1)
    cos, sin = torch.cos(r), torch.sin(r)  # RotatE: a rotation by the relation's phases
    if side == "tail":
        return torch.cat([cos * a_re - sin * a_im, cos * a_im + sin * a_re], dim=1)
    return torch.cat([cos * a_re + sin * a_im, cos * a_im - sin * a_re], dim=1)  # the inverse rotation


def candidate_scores(model: str, queries, table, margin: float = 0.0, p_norm: float = 1.0, squared_norms=None):
    """``(len(queries), len(table))`` scores of every query against every candidate entity row of ``table``, as
    ``model`` scores a triple (TransE ``-||q - t||``, DistMult and ComplEx ``<q, t>``, RotatE ``margin - ||q - t||``
    through ``|q|^2 + |t|^2 - 2 <q, t>``; ``squared_norms``: the rows' precomputed ``|t|^2``). Differentiable: the
    ``shared`` negative sampling of :mod:`tessera.graphs.embeddings` trains with it; without gradients (evaluation)
    RotatE's temporaries are reused in place, which bounds a block's memory (:data:`BYTES_PER_SCORE`)."""
    import torch

    if model == "transe":
        return -torch.cdist(queries, table, p=p_norm)
    products = queries @ table.T
    if model != "rotate":
        return products
    norms = (table * table).sum(dim=1) if squared_norms is None else squared_norms
    squared = (queries * queries).sum(dim=1, keepdim=True) + norms.unsqueeze(0)
    if torch.is_grad_enabled() and (queries.requires_grad or table.requires_grad):
        return margin - (squared - 2 * products).clamp_min(0).sqrt()
    return squared.sub_(products.mul_(2)).clamp_min_(0).sqrt_().neg_().add_(margin)


class LinkPredictionEvaluator:
    """Filtered realistic ranks of one split of ``graph`` (see the module docstring); the filter is built once, so
    validation during training reuses it."""

    def __init__(self, graph: KnowledgeGraph, split: str, eval_batch_size: int = 0):
        self.graph, self.split = graph, split
        self.triples = graph.split(split)
        if not len(self.triples):
            raise GraphError(f"graph {graph.name} has no triples in split {split!r} to evaluate")
        if eval_batch_size < 0:
            raise GraphError(f"eval_batch_size must be 0 (automatic) or a number of scores, not {eval_batch_size}")
        if eval_batch_size:
            check_batch_size(eval_batch_size)
        self.eval_batch_size = eval_batch_size or automatic_batch_size()
        entities = graph.num_entities
        self.rows = max(1, min(len(self.triples), self.eval_batch_size // entities))
        self.chunk = max(1, min(entities, self.eval_batch_size // self.rows))
        self._known_tails, self._known_heads = _known(graph.triples)

    def evaluate(self, scorer, progress: bool = False) -> dict:
        """MR, MRR and Hits@1/3/10 of both sides together and of each (``both``, ``head``, ``tail``)."""
        import torch

        started = time.perf_counter()
        with torch.no_grad():
            scores = CandidateScores(scorer)
            ranks = {"head": [], "tail": []}
            with _progress_bar(f"evaluate {self.split}", len(self.triples), progress) as advance:
                for start in range(0, len(self.triples), self.rows):
                    block = self.triples[start : start + self.rows]
                    for side in ("head", "tail"):
                        ranks[side].append(self._ranks(scores, block, side))
                    advance(len(block))
        head, tail = np.concatenate(ranks["head"]), np.concatenate(ranks["tail"])
        return {
            "both": _rank_metrics(np.concatenate([head, tail])),
            "head": _rank_metrics(head),
            "tail": _rank_metrics(tail),
            "triples": int(len(self.triples)),
            "split": self.split,
            "seconds": round(time.perf_counter() - started, 3),
            "eval_batch_size": self.eval_batch_size,
        }

    def _ranks(self, scores: CandidateScores, block: np.ndarray, side: str) -> np.ndarray:
        import torch

        heads, relations, tails = (torch.as_tensor(block[:, i], dtype=torch.long) for i in range(3))
        anchors, answers = (tails, heads) if side == "head" else (heads, tails)
        queries = scores.queries(anchors, relations, side)
        true = scores.against(queries, answers).diagonal().unsqueeze(1)
        rows, filtered = self._filter(block, side)
        higher = torch.zeros(len(block), dtype=torch.long)
        at_least = torch.zeros(len(block), dtype=torch.long)
        for first in range(0, scores.num_entities, self.chunk):
            last = min(first + self.chunk, scores.num_entities)
            chunk = scores.against(queries, slice(first, last))
            inside = (filtered >= first) & (filtered < last)
            chunk[rows[inside], filtered[inside] - first] = float("-inf")  # the true answer and the other known ones
            higher += (chunk > true).sum(dim=1)
            at_least += (chunk >= true).sum(dim=1)
        return ((1 + higher + 1 + at_least) / 2.0).numpy()

    def _filter(self, block: np.ndarray, side: str):
        """``(row, entity)`` index tensors of every known answer of each query of ``block`` (the true one too)."""
        import torch

        rows, entities = [], []
        for row, (h, r, t) in enumerate(block.tolist()):
            known = self._known_heads[(r, t)] if side == "head" else self._known_tails[(h, r)]
            rows += [row] * len(known)
            entities += known
        return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(entities, dtype=torch.long)


def _progress_bar(label: str, total: int, enabled: bool):
    """A context yielding ``advance(n)``: a rich progress bar on stderr in the style of the trainer's console logger
    when ``enabled``, else a no-op."""
    from contextlib import contextmanager, nullcontext

    if not enabled:
        return nullcontext(lambda count: None)

    @contextmanager
    def bar():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("triples"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as progress:
            task = progress.add_task(label, total=total)
            yield lambda count: progress.advance(task, count)

    return bar()


def _known(triples: np.ndarray) -> tuple[dict, dict]:
    """``{(head, relation): [tails]}`` and ``{(relation, tail): [heads]}`` over all triples (the filter)."""
    tails, heads = {}, {}
    for h, r, t in set(map(tuple, triples.tolist())):
        tails.setdefault((h, r), []).append(t)
        heads.setdefault((r, t), []).append(h)
    return tails, heads


def _rank_metrics(ranks: np.ndarray) -> dict:
    return {
        "mr": float(ranks.mean()),
        "mrr": float((1.0 / ranks).mean()),
        **{f"hits_at_{k}": float((ranks <= k).mean()) for k in (1, 3, 10)},
    }
