"""ERNIE-style entity-embedding fusion: pretrained KG entity embeddings, projected to the encoder's width and
added to its input (word) embeddings on the tokens of linked entity mentions.

:func:`attach_fusion` adds an :class:`EntityFusion` module to a model and a forward hook on its input embedding
layer. The hook reads the ``input_ids`` the layer receives, maps them back to words (WordPiece ``##`` pieces or
``Ġ`` / ``▁`` word starts), links the words with an :class:`~tessera.graphs.linking.EntityLinker` (memoised per
sequence) and adds ``projection(entity embedding)`` to every token of each mention. The projection starts at
zero, so training starts from the unchanged model, and is the only new trainable weight; the entity embeddings
are a frozen, non-persistent buffer.

Export: the fused model is **not** a plain Hugging Face model: its output depends on entity linking at run time,
which no transformers architecture expresses, and nothing of it can be folded into the weights. The fusion's
weights are kept out of the model's ``state_dict``, so ``save_pretrained`` writes the plain encoder (which loads
anywhere, without the knowledge); :func:`save_fusion` writes the projection, the entity embeddings and the graph
source beside it (``entity_fusion/``), and :func:`load_fused` rebuilds the fused model from such an export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tessera.graphs.linking import EntityLinker
from tessera.graphs.store import GraphError

FUSION_DIR = "entity_fusion"
MODULE_NAME = "tessera_entity_fusion"


class TokenEntityLinker:
    """Maps a sequence of token ids to one entity id per position (-1 where no entity is linked).

    Words are rebuilt from the tokens: WordPiece pieces starting with ``##`` continue a word; with byte-level BPE
    (``Ġ``) or SentencePiece (``▁``) vocabularies a token without the word-start mark continues one.
    """

    def __init__(self, tokenizer, linker: EntityLinker, cache_size: int = 200_000):
        self.tokenizer = tokenizer
        self.linker = linker
        self.special = set(tokenizer.all_special_ids)
        vocabulary = tokenizer.get_vocab()
        self.marker = next((m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in vocabulary) > 100), None)
        self.cache_size = cache_size
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def words(self, ids: list[int]) -> list[tuple[str, list[int]]]:
        """The words of ``ids`` as ``(text, token positions)``, special tokens left out."""
        words: list[tuple[list[str], list[int]]] = []
        joinable = False  # whether the next token may continue the last word
        for position, (token_id, token) in enumerate(zip(ids, self.tokenizer.convert_ids_to_tokens(ids))):
            if token_id in self.special or not token:
                joinable = False
                continue
            if self.marker:
                continues, piece = not token.startswith(self.marker), token.lstrip(self.marker)
            else:
                continues, piece = token.startswith("##"), token.removeprefix("##")
            if continues and joinable:
                words[-1][0].append(piece)
                words[-1][1].append(position)
            else:
                words.append(([piece], [position]))
            joinable = True
        return [("".join(pieces), positions) for pieces, positions in words]

    def entities(self, ids: list[int]) -> list[int]:
        """The entity id of each position of ``ids`` (-1: none), memoised per sequence."""
        key = tuple(ids)
        found = self._cache.get(key)
        if found is None:
            found = [-1] * len(ids)
            words = self.words(list(ids))
            offsets, cursor = [], 0
            for word, _ in words:
                offsets.append(cursor)
                cursor += len(word) + 1
            text = " ".join(word for word, _ in words)
            for mention in self.linker.link(text):
                for (_, positions), offset in zip(words, offsets):
                    if mention.start <= offset < mention.end:
                        for position in positions:
                            found[position] = mention.entity
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = found
        return found


def _fusion_module(num_entities: int, entity_dim: int, hidden: int):
    import torch

    class EntityFusion(torch.nn.Module):
        """Frozen entity embeddings (a non-persistent buffer) and the trainable projection to the model width."""

        def __init__(self):
            super().__init__()
            self.register_buffer("entities", torch.zeros(num_entities, entity_dim), persistent=False)
            self.projection = torch.nn.Linear(entity_dim, hidden, bias=False)
            torch.nn.init.zeros_(self.projection.weight)

        def forward(self, entity_ids):
            mask = (entity_ids >= 0).unsqueeze(-1)
            vectors = self.entities[entity_ids.clamp(min=0)]
            return self.projection(vectors) * mask

    return EntityFusion()


def attach_fusion(model, tokenizer, linker: EntityLinker, entity_vectors: np.ndarray):
    """Add entity fusion to ``model`` in place (module ``tessera_entity_fusion`` and a hook on its input
    embeddings) and return the model. The fusion's parameters are trainable and absent from ``state_dict()``."""
    import torch

    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise GraphError(f"{type(model).__name__} has no input embeddings to fuse entity embeddings into")
    vectors = torch.as_tensor(entity_vectors, dtype=torch.float32)
    fusion = _fusion_module(vectors.shape[0], vectors.shape[1], embeddings.embedding_dim)
    fusion.entities.copy_(vectors)
    fusion.to(embeddings.weight.device)
    model.add_module(MODULE_NAME, fusion)
    token_linker = TokenEntityLinker(tokenizer, linker)

    def add_entities(module, inputs, output):
        input_ids = inputs[0]
        ids = torch.tensor([token_linker.entities(row) for row in input_ids.tolist()], device=output.device)
        if bool((ids >= 0).any()):
            output = output + fusion(ids).to(output.dtype)
        return output

    def drop_from_state_dict(module, state_dict, prefix, local_metadata):
        for key in [key for key in state_dict if key.startswith(prefix)]:
            del state_dict[key]

    fusion.register_state_dict_post_hook(drop_from_state_dict)
    fusion.hook_handle = embeddings.register_forward_hook(add_entities)
    fusion.token_linker = token_linker
    return model


def fusion_of(model):
    """The :class:`EntityFusion` module attached to ``model``, or None."""
    return getattr(model, MODULE_NAME, None)


def save_fusion(fusion, directory: Path, graph_source: str, linker: EntityLinker) -> Path:
    """Write ``directory/entity_fusion/``: the projection, the entity embeddings and how to link (JSON)."""
    from safetensors.torch import save_file

    target = Path(directory) / FUSION_DIR
    target.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "projection.weight": fusion.projection.weight.detach().cpu().contiguous(),
            "entities": fusion.entities.detach().cpu().contiguous(),
        },
        str(target / "fusion.safetensors"),
    )
    (target / "fusion.json").write_text(
        json.dumps(
            {
                "graph": graph_source,
                "entities": int(fusion.entities.shape[0]),
                "disambiguation": linker.disambiguation,
                "lemmatize": linker.lemmatize,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return target


def load_fused(export_dir: Path, plugins, auto_class: str = "AutoModelForSequenceClassification"):
    """Load an export written with entity fusion: ``(model, tokenizer)`` with the fusion re-attached.

    Needs the graph the run linked against (``fusion.json`` names it; tessera loads it from its cache or assets,
    with the graph loaders of ``plugins``).
    """
    import transformers
    from safetensors.torch import load_file

    from tessera.graphs.loaders import load_graph

    export_dir = Path(export_dir)
    settings_path = export_dir / FUSION_DIR / "fusion.json"
    if not settings_path.is_file():
        raise GraphError(f"{export_dir} has no {FUSION_DIR}/fusion.json: it was not trained with kg=entity_fusion")
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    tensors = load_file(str(export_dir / FUSION_DIR / "fusion.safetensors"))
    model = getattr(transformers, auto_class).from_pretrained(export_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    linker = EntityLinker(
        load_graph(settings["graph"], plugins),
        disambiguation=settings["disambiguation"],
        lemmatize=settings["lemmatize"],
    )
    attach_fusion(model, tokenizer, linker, tensors["entities"].numpy())
    fusion_of(model).projection.weight.data.copy_(tensors["projection.weight"])
    return model, tokenizer
