"""A user's own link-prediction splits: ``tsv:DIR`` reads ``DIR/train.txt`` and, when present, ``DIR/valid.txt``
and ``DIR/test.txt``, one ``head<TAB>relation<TAB>tail`` triple a line (PyKEEN's and the usual benchmarks' format).

``DIR`` is resolved against the current directory when the source is named (``~`` expands), and the cache
fingerprint holds the resolved path and each file's size and modification time, so an edited file is read again.
A malformed line, or an entity or relation of ``valid.txt`` / ``test.txt`` that ``train.txt`` never mentions (a
model cannot rank what it never trained on), is refused with the file and line number.
"""

from __future__ import annotations

from pathlib import Path

from tessera.graphs.loaders import GraphLoader
from tessera.graphs.store import PARSE_BYTES_PER_TRIPLE, GraphError, KnowledgeGraph, check_memory

SPLITS = ("train", "valid", "test")
#: A typical line of such files (WN18RR's ``00260881<TAB>_hypernym<TAB>00260622``: 29 bytes): the memory check
#: before parsing estimates ``file size / this`` triples.
TYPICAL_BYTES_PER_LINE = 30


def read_tsv_triples(path) -> list[tuple[str, str, str]]:
    """``(head, relation, tail)`` rows of a tab-separated file; a malformed row raises with file and line."""
    return [row for _, row in numbered_tsv_triples(path)]


def numbered_tsv_triples(path):
    """``(line number, (head, relation, tail))`` of each non-blank line of a tab-separated file; a malformed line
    raises :class:`GraphError` with the file and the line number."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3:
                raise GraphError(f"{path} line {number}: expected head<TAB>relation<TAB>tail, got {len(parts)} fields")
            if not all(part.strip() for part in parts):
                raise GraphError(f"{path} line {number}: an empty head, relation or tail: fill it in or drop the line")
            yield number, (parts[0], parts[1], parts[2])


def graph_from_splits(name: str, parts: dict[str, list[tuple[str, str, str]]]) -> KnowledgeGraph:
    """A graph of the rows of every split, in order, with ``splits`` naming each split's triples; labels and
    aliases are the keys with ``_`` as spaces."""
    rows, splits = [], {}
    for split, part in parts.items():
        splits[split] = list(range(len(rows), len(rows) + len(part)))
        rows += part
    entities = {key for h, _, t in rows for key in (h, t)}
    return KnowledgeGraph.from_triples(
        name,
        rows,
        labels={key: key.replace("_", " ") for key in entities},
        aliases=[(key.replace("_", " "), key, 1.0) for key in sorted(entities)],
        splits=splits,
    )


class TSVLoader(GraphLoader):
    """``train.txt`` / ``valid.txt`` / ``test.txt`` of head, relation, tail from a directory of the user's."""

    name = "tsv"
    summary = "your own splits: tsv:DIR with DIR/train.txt [valid.txt test.txt], head<TAB>relation<TAB>tail lines"
    argument_help = "directory with train.txt, valid.txt, test.txt"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.directory = Path(self.argument).expanduser().resolve()

    def files(self) -> dict[str, Path]:
        """The split files present, ``train.txt`` first (required)."""
        if not self.directory.is_dir():
            raise GraphError(f"tsv source {self.argument}: {self.directory} is not a directory: check the path")
        if not (self.directory / "train.txt").is_file():
            raise GraphError(
                f"tsv source {self.argument}: {self.directory} has no train.txt (head<TAB>relation<TAB>tail)"
            )
        return {s: self.directory / f"{s}.txt" for s in SPLITS if (self.directory / f"{s}.txt").is_file()}

    def fingerprint(self) -> str:
        stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in self.files().values()]
        return f"{self.directory}\0{stats}"

    def load(self) -> KnowledgeGraph:
        files = self.files()
        size = sum(path.stat().st_size for path in files.values())
        check_memory(size // TYPICAL_BYTES_PER_LINE, 0, f"tsv:{self.argument}", PARSE_BYTES_PER_TRIPLE)
        numbered = {split: list(numbered_tsv_triples(path)) for split, path in files.items()}
        _check_seen_in_train(numbered, files)
        return graph_from_splits(
            self.directory.name, {split: [row for _, row in rows] for split, rows in numbered.items()}
        )


def _check_seen_in_train(numbered: dict, files: dict) -> None:
    """Refuse a valid / test triple whose entity or relation is not in the training split."""
    entities = {key for _, (h, _, t) in numbered["train"] for key in (h, t)}
    relations = {r for _, (_, r, _) in numbered["train"]}
    for split in ("valid", "test"):
        for number, (h, r, t) in numbered.get(split, []):
            unseen = [f"entity {key!r}" for key in (h, t) if key not in entities]
            unseen += [f"relation {r!r}"] if r not in relations else []
            if unseen:
                raise GraphError(
                    f"{files[split]} line {number}: {' and '.join(unseen)} not in train.txt (a model cannot rank "
                    "what it never trained on): add a training triple with it or drop this line"
                )
