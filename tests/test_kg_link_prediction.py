"""Link prediction at scale: evaluation in memory-bounded blocks (the same ranks whatever the blocks), validation
with early stopping and the best state kept, the self-adversarial loss, the ``tsv:`` source of a user's own
splits (from the docs' example) and the WN18RR-style split of WordNet."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import plugins
from tessera.core.assets import MANIFEST, tessera_home
from tessera.graphs.embeddings import KGEConfig, TrainedEmbeddings, _Scorer, link_prediction, train_embeddings
from tessera.graphs.link_prediction import BYTES_PER_SCORE, CandidateScores, LinkPredictionEvaluator
from tessera.graphs.loaders import load_graph
from tessera.graphs.loaders.wn18rr import benchmark_split
from tessera.graphs.store import GraphError, GraphTooLargeError, KnowledgeGraph

DOCS = Path(__file__).resolve().parents[1] / "docs"
HAS_PYKEEN = (tessera_home() / "assets" / "pykeen" / MANIFEST).is_file()
needs_pykeen = pytest.mark.skipif(not HAS_PYKEEN, reason="asset 'pykeen' is not fetched")


@pytest.fixture(scope="module")
def umls():
    return load_graph("pykeen:umls", plugins())


@pytest.fixture(scope="module")
def nations():
    return load_graph("pykeen:nations", plugins())


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("seconds", "eval_batch_size")}


@needs_pykeen
@pytest.mark.parametrize(
    "model, encoder",
    [("transe", "none"), ("distmult", "none"), ("complex", "none"), ("rotate", "none"), ("rotate", "rgcn")],
)
def test_blocks_of_any_size_give_the_same_ranks(umls, model, encoder):
    import torch

    torch.manual_seed(0)
    scorer = _Scorer(umls, umls.split("train"), KGEConfig(model=model, dim=8, encoder=encoder))
    whole = link_prediction(scorer, umls, "test", eval_batch_size=10**7)  # every test triple against every entity
    chunked = link_prediction(scorer, umls, "test", eval_batch_size=50)  # one triple against 50 entities at a time
    assert LinkPredictionEvaluator(umls, "test", 10**7).rows == 661
    blocks = LinkPredictionEvaluator(umls, "test", 50)
    assert (blocks.rows, blocks.chunk) == (1, 50) and umls.num_entities % 50 != 0  # a ragged last chunk too
    assert without_timing(chunked) == without_timing(whole)
    assert 0 < whole["both"]["mrr"] < 1 and whole["triples"] == 661


@needs_pykeen
@pytest.mark.parametrize("model", ["transe", "distmult", "complex", "rotate"])
def test_candidate_scores_are_the_models_own_scores(umls, model):
    import torch

    torch.manual_seed(1)
    scorer = _Scorer(umls, umls.split("train"), KGEConfig(model=model, dim=8))
    scores = CandidateScores(scorer)
    h, r, t = (torch.as_tensor(umls.split("test")[:5, i], dtype=torch.long) for i in range(3))
    every = torch.arange(umls.num_entities)
    with torch.no_grad():
        tails = scores.against(scores.queries(h, r, "tail"), slice(None))
        heads = scores.against(scores.queries(t, r, "head"), slice(None))
        for row in range(5):
            n = umls.num_entities
            own_tails = scorer.score(h[row].repeat(n), r[row].repeat(n), every)
            own_heads = scorer.score(every, r[row].repeat(n), t[row].repeat(n))
            assert torch.allclose(tails[row], own_tails.double(), atol=1e-5)
            assert torch.allclose(heads[row], own_heads.double(), atol=1e-5)


@needs_pykeen
def test_the_automatic_budget_follows_the_memory_available(umls, monkeypatch):
    monkeypatch.setenv("TESSERA_KG_MEMORY_BYTES", str(20 * BYTES_PER_SCORE * 10))  # a tenth: 20 scores a block
    evaluator = LinkPredictionEvaluator(umls, "test")
    assert evaluator.eval_batch_size == 20 and (evaluator.rows, evaluator.chunk) == (1, 20)
    with pytest.raises(GraphTooLargeError, match=r"evaluation blocks of 1,000 scores x 40 bytes .* lower --eval-batch"):
        LinkPredictionEvaluator(umls, "test", 1000)


@needs_pykeen
def test_validation_keeps_the_best_state_and_stops_early(nations):
    config = KGEConfig(model="distmult", dim=16, epochs=30, learning_rate=0.5, evaluate_every=2, patience=2)
    trained = train_embeddings(nations, config)
    validation = trained.metrics["validation"]
    history = [entry["mrr"] for entry in validation["history"]]
    assert validation["stopped_early"] and validation["epochs_trained"] < 30
    assert validation["best_mrr"] == max(history) and history.index(max(history)) == len(history) - 3
    assert trained.metrics["split"] == "test"
    # the returned embeddings are the best epoch's: evaluating them again gives the best validation MRR
    import torch

    scorer = _Scorer(nations, nations.split("train"), config)
    with torch.no_grad():
        scorer.model.node_emb.weight.copy_(torch.as_tensor(trained.entities))
        scorer.model.rel_emb.weight.copy_(torch.as_tensor(trained.relations))
    assert link_prediction(scorer, nations, "valid")["both"]["mrr"] == pytest.approx(validation["best_mrr"], rel=1e-6)
    with pytest.raises(GraphError, match="patience needs evaluate_every"):
        train_embeddings(nations, KGEConfig(patience=3))


@needs_pykeen
def test_self_adversarial_loss_learns(umls):
    config = KGEConfig(model="rotate", dim=16, epochs=10, negatives=16, loss="nssa", margin=6.0, learning_rate=0.05)
    trained = train_embeddings(umls, config)
    assert trained.metrics["both"]["mrr"] > 0.5  # untrained: about 0.05
    untrained = train_embeddings(umls, KGEConfig(model="rotate", dim=16, epochs=1, loss="nssa", learning_rate=1e-9))
    assert untrained.metrics["both"]["mrr"] < 0.15


def docs_tsv_example() -> tuple[str, list[list[str]]]:
    """The shell lines that write the example splits and the ``tessera kg ...`` commands of docs/kg.md's tsv
    section."""
    text = (DOCS / "kg.md").read_text(encoding="utf-8")
    section = text[text.index("### Your own triples: `tsv:DIR`") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    commands = [line.split()[1:] for line in lines if line.startswith("tessera ")]
    return "\n".join(line for line in lines if not line.startswith("tessera ")), commands


def test_a_users_splits_load_through_tsv_as_the_docs_say(tmp_path, private_cache, monkeypatch, capsys):
    from tessera.graphs.cli import main

    script, commands = docs_tsv_example()
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    assert [c[:2] for c in commands] == [["kg", "info"], ["kg", "embed"]]
    for command in commands:
        assert main(command[1:]) == 0
    shown = capsys.readouterr().out
    assert "splits: train 6, valid 2, test 2" in shown and "test (2 triples):" in shown
    graph = load_graph("tsv:my-kg", plugins())  # a path relative to the current directory
    assert graph.num_entities == 5 and set(graph.splits) == {"train", "valid", "test"}


def test_tsv_errors_name_the_file_and_line(tmp_path, private_cache):
    kg = tmp_path / "kg"
    kg.mkdir()
    (kg / "train.txt").write_text("a\tr\tb\nb\tr\tc\n")
    (kg / "test.txt").write_text("a\tr\tc\n\nc\tr\td\n")
    with pytest.raises(GraphError, match=r"kg/test.txt line 3: entity 'd' not in train.txt .*drop this line"):
        load_graph(f"tsv:{kg}", plugins())
    (kg / "test.txt").write_text("a\ts\tc\n")
    with pytest.raises(GraphError, match=r"test.txt line 1: relation 's' not in train.txt"):
        load_graph(f"tsv:{kg}", plugins())
    (kg / "valid.txt").write_text("a\tr\n")
    with pytest.raises(GraphError, match=r"valid.txt line 1: expected head<TAB>relation<TAB>tail, got 2 fields"):
        load_graph(f"tsv:{kg}", plugins())
    (kg / "valid.txt").write_text("a\t\tc\n")
    with pytest.raises(GraphError, match=r"valid.txt line 1: an empty head, relation or tail"):
        load_graph(f"tsv:{kg}", plugins())
    with pytest.raises(GraphError, match=r"has no train.txt"):
        load_graph(f"tsv:{tmp_path}", plugins())
    with pytest.raises(GraphError, match=r"is not a directory: check the path"):
        load_graph(f"tsv:{tmp_path / 'nowhere'}", plugins())


def test_benchmark_split_removes_mirrors_and_holds_out_only_seen_entities():
    rng = np.random.default_rng(0)
    names = [f"e{i}" for i in range(60)]
    rows = {(f"e{h}", "hyper", f"e{t}") for h, t in rng.integers(0, 60, (150, 2)) if h < t}  # never mirrored
    pairs = {(f"e{min(a, b)}", f"e{max(a, b)}") for a, b in rng.integers(0, 60, (40, 2)) if a != b}
    rows |= {(a, "similar", b) for a, b in pairs} | {(b, "similar", a) for a, b in pairs}
    graph = KnowledgeGraph.from_triples("toy", sorted(rows), aliases=[("lonely", "alone", 1.0)])
    split = benchmark_split(graph, held_out=10)
    keys = {(split.entities[h], split.relations[r], split.entities[t]) for h, r, t in split.triples.tolist()}
    mirrored = {(a, r, b) for a, r, b in keys if (b, r, a) in keys}
    assert not mirrored and len(keys) == len(rows) - len(pairs)
    assert "alone" not in split.entities and set(split.entities) <= set(names)
    assert {k: len(v) for k, v in split.splits.items()} == {"train": len(keys) - 20, "valid": 10, "test": 10}
    train = split.split("train")
    for name in ("valid", "test"):
        held = split.split(name)
        assert set(held[:, [0, 2]].ravel()) <= set(train[:, [0, 2]].ravel())
        assert set(held[:, 1]) <= set(train[:, 1])
    both = benchmark_split(graph, mirrored=True, held_out=10)
    assert both.num_triples == len(rows) and both.name == "wn18rr-mirrored"


@needs_pykeen
def test_embeddings_files_keep_the_validation_record(tmp_path, nations):
    config = KGEConfig(model="transe", dim=8, epochs=2, evaluate_every=1)
    trained = train_embeddings(nations, config, evaluate=None)
    again = TrainedEmbeddings.load(trained.save(tmp_path / "e.npz"))
    assert again.metrics["validation"]["history"] == trained.metrics["validation"]["history"]
    assert [entry["epoch"] for entry in again.metrics["validation"]["history"]] == [1, 2]
