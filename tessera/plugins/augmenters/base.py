"""What every built-in augmenter shares: copies per example, protected words, the screen for bad input (passed
through and counted), determinism from the seed, the on-disk cache, and the report written to the run directory.

An augmenter keeps every original example and appends up to ``copies`` augmented variants after it (each with
the original's label); a variant equal to its original is dropped. Bad input is never an error: an empty text, a
non-English text, or one with no word the technique can change is passed through unchanged and counted in
``RUN_DIR/augment/<name>.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.files import write_json
from tessera.core.techniques import Augmenter, TechniqueConfig
from tessera.robustness.words import NEGATIONS, Protected, screen

log = logging.getLogger("tessera")
#: Bump when the output of any built-in augmenter changes for the same config, seed and data.
CACHE_VERSION = 1


@dataclass
class TextAugmenterConfig(TechniqueConfig):
    """Parameters shared by the built-in augmenters."""

    #: Augmented variants added per example (the original is always kept).
    copies: int = 1
    #: Words never changed, removed or moved (case-insensitive); an entry starting with an apostrophe is a suffix
    #: ("'n't" covers "isn't"). Negations by default, so sentiment is not flipped.
    protected: list[str] = field(default_factory=lambda: list(NEGATIONS))
    #: Keep the augmented examples on disk under ``$TESSERA_HOME/cache/augment`` (keyed by config, seed and data)
    #: and reuse them in later runs; false computes them in every run.
    cache: bool = False


def cache_directory() -> Path:
    """Where cached augmentations live: ``<tessera home>/cache/augment``."""
    from tessera.core.assets import tessera_home

    return tessera_home() / "cache" / "augment"


class TextAugmenter(Augmenter):
    """Base of the built-in augmenters. Subclasses implement :meth:`vary` (one text, one random generator) or,
    for techniques that work on many texts at once, :meth:`variants`."""

    Config = TextAugmenterConfig

    def __init__(self, config):
        super().__init__(config)
        self.protected = Protected(config.protected)
        #: Counts of the last :meth:`augment` call (see :meth:`augment`); ``None`` before it.
        self.report: dict | None = None

    def validate(self, composition) -> None:
        if self.config.copies < 1:
            raise ConfigError(f"augment.{self.name}.copies={self.config.copies}: set it to 1 or more")
        for key, value in dataclasses.asdict(self.config).items():
            if (key.startswith(("rate", "alpha", "p_")) or key.endswith("rate")) and not 0 <= value <= 1:
                raise ConfigError(f"augment.{self.name}.{key}={value} is not a rate: set it between 0 and 1")

    # --- what subclasses provide --------------------------------------------------------------------------

    def vary(self, text: str, rng, copy: int) -> str | None:
        """Variant number ``copy`` of ``text`` (``None`` or ``text`` itself when nothing can change)."""
        raise NotImplementedError

    def variants(self, texts: list[str], seed: int) -> list[list[str]]:
        """Up to ``copies`` variants of each text; by default :meth:`vary` with a generator per text and copy."""
        from tessera.robustness.words import rng_for

        return [
            [self.vary(text, rng_for(seed, self.name, copy, text), copy) for copy in range(self.config.copies)]
            for text in texts
        ]

    # --- the family protocol --------------------------------------------------------------------------------

    def augment(self, examples: list[dict], seed: int) -> list[dict]:
        """Every example followed by its distinct variants. Sets :attr:`report`: ``examples_in``,
        ``examples_out``, ``augmented`` (examples that got a variant), ``unchanged`` by reason (``empty``,
        ``non_english``, ``no_replaceable_word``), ``cache`` (``hit``, ``miss`` or ``off``) and ``seconds``."""
        started = time.perf_counter()
        path = cache_directory() / self.name / f"{self._cache_key(examples, seed)}.json"
        if self.config.cache and path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            self.report = {**cached["report"], "cache": "hit", "seconds": time.perf_counter() - started}
            return cached["examples"]
        unchanged = {"empty": 0, "non_english": 0, "no_replaceable_word": 0}
        reasons = [screen(example["text"]) for example in examples]
        workable = [example["text"] for example, reason in zip(examples, reasons) if reason is None]
        found = iter(self.variants(workable, seed))
        output, augmented = [], 0
        for example, reason in zip(examples, reasons):
            output.append(example)
            if reason is not None:
                unchanged[reason] += 1
                continue
            new = list(dict.fromkeys(v for v in next(found) if v and v.strip() and v != example["text"]))
            if not new:
                unchanged["no_replaceable_word"] += 1
                continue
            augmented += 1
            output += [{**example, "text": text} for text in new]
        self.report = {
            "technique": self.name,
            "examples_in": len(examples),
            "examples_out": len(output),
            "augmented": augmented,
            "unchanged": unchanged,
            "cache": "miss" if self.config.cache else "off",
            "seconds": time.perf_counter() - started,
        }
        if self.config.cache:
            write_json(path, {"report": self.report, "examples": output})
        log.info("augment=%s: %d -> %d examples, unchanged %s", self.name, len(examples), len(output), unchanged)
        return output

    def _cache_key(self, examples: list[dict], seed: int) -> str:
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "cache"}
        data = hashlib.sha256(json.dumps(examples, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        identity = {"technique": self.name, "config": settings, "seed": seed, "data": data, "v": CACHE_VERSION}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    @hookimpl
    def tessera_run_start(self, run):
        """Write this augmenter's counts to ``RUN_DIR/augment/<name>.json`` once the run starts training."""
        if self.report is not None and run.dir is not None and run.is_main:
            write_json(Path(run.dir) / "augment" / f"{self.name}.json", self.report)
