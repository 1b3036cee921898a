"""KG embeddings through torch_geometric.nn.kge: training, filtered realistic ranks (checked by brute force), RGCN,
saving and caching."""

import numpy as np
import pytest

from conftest import plugins
from tessera.core.assets import MANIFEST, tessera_home
from tessera.graphs.embeddings import (
    KGEConfig,
    TrainedEmbeddings,
    _Scorer,
    cached_embeddings,
    embeddings_path,
    link_prediction,
    train_embeddings,
)
from tessera.graphs.loaders import load_graph
from tessera.graphs.store import GraphError

REAL_HOME = tessera_home()
pytestmark = pytest.mark.skipif(
    not (REAL_HOME / "assets" / "pykeen" / MANIFEST).is_file(), reason="asset 'pykeen' is not fetched"
)


@pytest.fixture(scope="module")
def nations():
    return load_graph("pykeen:nations", plugins())


def brute_force_ranks(scorer, graph, split):
    """Realistic filtered ranks of both sides, one candidate at a time (the definition, slowly)."""
    import torch

    known = {tuple(t) for t in graph.triples.tolist()}

    def score(triple):
        return float(scorer.score(*(torch.tensor([x]) for x in triple)))

    ranks = []
    for h, r, t in graph.split(split).tolist():
        for side in ("head", "tail"):
            candidates = [(e, r, t) if side == "head" else (h, r, e) for e in range(graph.num_entities)]
            true_score = score((h, r, t))
            others = [score(c) for c in candidates if c != (h, r, t) and c not in known]
            better = sum(s > true_score for s in others)
            tied = sum(s == true_score for s in others)
            ranks.append(1 + better + tied / 2)
    return np.array(ranks)


def test_filtered_realistic_ranks_match_brute_force(nations):
    import torch

    trained = train_embeddings(nations, KGEConfig(model="transe", dim=16, epochs=3), evaluate=None)
    assert trained.metrics == {}
    scorer = _Scorer(nations, nations.split("train"), KGEConfig(model="transe", dim=16))
    with torch.no_grad():
        scorer.model.node_emb.weight.copy_(torch.as_tensor(trained.entities))
        scorer.model.rel_emb.weight.copy_(torch.as_tensor(trained.relations))
        metrics = link_prediction(scorer, nations, "test")
        reference = brute_force_ranks(scorer, nations, "test")
    assert metrics["triples"] == 201 and metrics["split"] == "test"
    assert metrics["both"]["mr"] == pytest.approx(reference.mean(), rel=1e-6)
    assert metrics["both"]["mrr"] == pytest.approx((1 / reference).mean(), rel=1e-6)
    assert metrics["both"]["hits_at_3"] == pytest.approx((reference <= 3).mean())


def test_ties_get_the_realistic_rank(nations):
    import torch

    scorer = _Scorer(nations, nations.split("train"), KGEConfig(model="distmult", dim=8))
    with torch.no_grad():
        scorer.model.node_emb.weight.zero_()  # every candidate scores 0: all tied
        metrics = link_prediction(scorer, nations, "test")
        reference = brute_force_ranks(scorer, nations, "test")
    assert metrics["both"]["mr"] == pytest.approx(reference.mean())
    assert 1 < metrics["both"]["mr"] < nations.num_entities / 2 + 1


def test_training_learns_both_directions(nations):
    trained = train_embeddings(nations, KGEConfig(model="rotate", dim=32, epochs=40, learning_rate=0.01))
    both, head, tail = (trained.metrics[side] for side in ("both", "head", "tail"))
    assert both["mrr"] > 0.45  # an untrained model scores about 0.25 on Nations
    assert both["mrr"] == pytest.approx((head["mrr"] + tail["mrr"]) / 2)
    assert both["hits_at_1"] <= both["hits_at_3"] <= both["hits_at_10"] <= 1
    assert trained.entities.shape == (14, 64)  # real and imaginary parts
    assert trained.relations.shape == (55, 32)


@pytest.mark.parametrize("model", ["transe", "distmult", "complex", "rotate"])
def test_shared_negatives_score_as_the_model_does(nations, model):
    """The matrix-product scores of shared negatives (with gradients, as in training) equal the model's own score of
    each corrupted triple, both sides."""
    import torch

    from tessera.graphs.link_prediction import candidate_scores, query_vectors

    scorer = _Scorer(nations, nations.split("train"), KGEConfig(model=model, dim=8, margin=3.0))
    h, r, t = (torch.as_tensor(nations.split("test")[:5, i], dtype=torch.long) for i in range(3))
    candidates = torch.arange(nations.num_entities)
    margin, p_norm = scorer.margin, scorer.p_norm
    rows, relations = scorer.entity_rows, scorer.relation_rows(r)
    if model == "transe":  # the model scores entity rows normalised to unit L2 norm
        assert scorer.entity_norm == 2.0
        rows = lambda ids: torch.nn.functional.normalize(scorer.entity_rows(ids), dim=-1)  # noqa: E731
    tails = candidate_scores(model, query_vectors(model, rows(h), relations, "tail"), rows(candidates), margin, p_norm)
    heads = candidate_scores(model, query_vectors(model, rows(t), relations, "head"), rows(candidates), margin, p_norm)
    assert tails.requires_grad
    n = nations.num_entities
    expected_tails = scorer.score(h.repeat_interleave(n), r.repeat_interleave(n), candidates.repeat(5)).view(5, n)
    expected_heads = scorer.score(candidates.repeat(5), r.repeat_interleave(n), t.repeat_interleave(n)).view(5, n)
    assert torch.allclose(tails, expected_tails, atol=1e-5) and torch.allclose(heads, expected_heads, atol=1e-5)


def test_shared_negative_sampling_learns(nations):
    trained = train_embeddings(
        nations, KGEConfig(model="rotate", dim=32, epochs=40, learning_rate=0.01, negatives=16, sampling="shared")
    )
    assert trained.metrics["both"]["mrr"] > 0.45  # an untrained model scores about 0.25 on Nations


@pytest.fixture(scope="module")
def wordnet_core():
    """The densest part of ``wn18rr:mirrored``: its training triples between the 3,000 entities of highest degree
    (2,544 of them connected, 4,750 triples), and the valid and test triples over them (118 and 111)."""
    if not (REAL_HOME / "assets" / "wordnet" / MANIFEST).is_file():
        pytest.skip("asset 'wordnet' is not fetched")
    from tessera.graphs.loaders.tsv import graph_from_splits

    graph = load_graph("wn18rr:mirrored", plugins())
    train = graph.split("train")
    degree = np.bincount(np.concatenate([train[:, 0], train[:, 2]]), minlength=graph.num_entities)
    core = np.zeros(graph.num_entities, dtype=bool)
    core[np.argsort(-degree, kind="stable")[:3000]] = True

    def keys(rows):
        inside = rows[core[rows[:, 0]] & core[rows[:, 2]]]
        return [(graph.entities[h], graph.relations[r], graph.entities[t]) for h, r, t in inside.tolist()]

    parts = {split: keys(graph.split(split)) for split in ("train", "valid", "test")}
    seen = {entity for h, _, t in parts["train"] for entity in (h, t)}
    for split in ("valid", "test"):
        parts[split] = [row for row in parts[split] if {row[0], row[2]} <= seen]
    return graph_from_splits("wordnet-core", parts)


def test_transe_learns_wordnet_with_the_self_adversarial_loss(wordnet_core):
    """TransE with RotatE's loss (margin 6) on real WordNet triples: 100x a random ranking's MRR. With
    torch_geometric's entity rows of unit L1 norm every distance stayed below the margin and it reached 8x."""
    config = KGEConfig(
        model="transe", dim=32, epochs=20, negatives=16, loss="nssa", margin=6.0, adversarial_temperature=0.5
    )
    untrained = train_embeddings(wordnet_core, KGEConfig(model="transe", dim=32, epochs=1, learning_rate=1e-9))
    trained = train_embeddings(wordnet_core, config)
    assert untrained.metrics["both"]["mrr"] < 0.01
    assert trained.metrics["both"]["mrr"] > 20 * untrained.metrics["both"]["mrr"]


def test_entity_initialisation(nations):
    import torch

    def entity_table(**settings):
        torch.manual_seed(0)
        return _Scorer(nations, nations.split("train"), KGEConfig(dim=256, **settings)).model.node_emb.weight

    rotate = entity_table(model="rotate")
    assert torch.equal(rotate, entity_table(model="rotate", init="uniform:0.5"))  # RotatE's default
    assert 0.49 < rotate.abs().max() <= 0.5
    xavier = (6 / (nations.num_entities + 256)) ** 0.5  # torch_geometric's Xavier uniform
    assert 0.9 * xavier < entity_table(model="rotate", init="pyg").abs().max() <= xavier
    assert torch.equal(entity_table(model="distmult"), entity_table(model="distmult", init="pyg"))
    assert 1.9 < entity_table(model="distmult", init="uniform:2").abs().max() <= 2
    for bad in ("normal", "uniform", "uniform:-1", "uniform:x"):
        with pytest.raises(GraphError, match=f"unknown KGE init '{bad}': choose default, pyg or uniform:B"):
            KGEConfig(init=bad).check()


def test_rgcn_encoder_and_complex(nations):
    trained = train_embeddings(nations, KGEConfig(model="complex", dim=8, epochs=2, encoder="rgcn", rgcn_bases=4))
    assert trained.entities.shape == (14, 16) and 0 < trained.metrics["both"]["mrr"] <= 1


def test_config_is_checked(nations):
    for bad, message in (
        (dict(model="transh"), "unknown KGE model 'transh'"),
        (dict(encoder="gat"), "unknown KGE encoder 'gat'"),
        (dict(loss="hinge"), "unknown KGE loss 'hinge'"),
        (dict(dim=0), "must be at least 1"),
        (dict(sampling="random"), "unknown KGE sampling 'random'"),
        (dict(sampling="shared", encoder="rgcn"), "use sampling=triple with an encoder"),
    ):
        with pytest.raises(GraphError, match=message):
            train_embeddings(nations, KGEConfig(**bad))
    with pytest.raises(GraphError, match="has no split 'dev'"):
        train_embeddings(nations, KGEConfig(epochs=1, train_split="dev"))


def test_save_load_and_cache(nations, tmp_path, monkeypatch):
    trained = train_embeddings(nations, KGEConfig(dim=8, epochs=1))
    path = trained.save(tmp_path / "e.npz")
    again = TrainedEmbeddings.load(path)
    assert np.array_equal(again.entities, trained.entities) and again.config == trained.config
    assert (tmp_path / "e.json").is_file()
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(GraphError, match="is not an embeddings file written by `tessera kg embed`"):
        TrainedEmbeddings.load(tmp_path / "bad.npz")

    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "assets").mkdir(parents=True)
    (tmp_path / "home" / "assets" / "pykeen").symlink_to(REAL_HOME / "assets" / "pykeen")
    config = KGEConfig(dim=8, epochs=2)
    first = cached_embeddings("pykeen:nations", config, plugins())
    assert embeddings_path("pykeen:nations", config, plugins()).is_file()
    assert np.array_equal(cached_embeddings("pykeen:nations", config, plugins()).entities, first.entities)
