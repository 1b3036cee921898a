"""``backtranslate``: paraphrases from a round trip through a translator.

Translators (``augment.backtranslate.translator``):

``apertium``
    Debian's rule-based Apertium, English -> ``pivot`` -> English (``apt-get install apertium
    apertium-eng-spa`` for the default Spanish pivot). Deterministic: one paraphrase per text; the whole
    training set goes through two ``apertium`` processes, about 3 s for 500 sentences.
``smollm2``
    The packaged SmolLM2-135M-Instruct (``asset:smollm2``) asked to rewrite each sentence; sampled from the
    seed, so ``copies`` > 1 gives different paraphrases. Slow on a CPU (seconds per sentence, batched): the
    results are cached by default.

A round trip that changes the number of protected words (negations by default: "doesn't" -> "does not" keeps
one) or comes back empty or unchanged is dropped, and the example counts as unchanged.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.plugins.augmenters.base import TextAugmenter, TextAugmenterConfig
from tessera.robustness.words import Words

TRANSLATORS = ("apertium", "smollm2")
_APT_HINT = "apt-get install apertium apertium-eng-{pivot}"


@dataclass
class BacktranslateConfig(TextAugmenterConfig):
    """The translator and its settings."""

    translator: str = "apertium"
    #: Apertium's pivot language (an installed ``eng-<pivot>`` and ``<pivot>-eng`` pair).
    pivot: str = "spa"
    #: SmolLM2: texts per generation batch, new tokens per paraphrase and sampling temperature.
    batch_size: int = 16
    max_new_tokens: int = 64
    temperature: float = 0.7
    cache: bool = True


def apertium_pairs() -> set[str]:
    """The Apertium language pairs installed on this machine (empty when Apertium is not installed)."""
    if shutil.which("apertium") is None:
        return set()
    listed = subprocess.run(["apertium", "-l"], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in listed.stdout.splitlines() if line.strip()}


def _apertium(texts: list[str], pair: str) -> list[str]:
    """Translate ``texts`` (one per line) with the Apertium ``pair`` in one process."""
    flat = "\n".join(re.sub(r"\s+", " ", text).strip() for text in texts)
    done = subprocess.run(["apertium", "-u", pair], input=flat, capture_output=True, text=True, timeout=3600)
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < len(texts):
        raise ConfigError(f"apertium {pair} failed ({done.stderr.strip()[:200]}): check `apertium -l` lists {pair}")
    return [line.strip() for line in lines[: len(texts)]]


class _SmolLM2Paraphraser:
    """SmolLM2-135M-Instruct prompted to rewrite a sentence; batched, left-padded, sampled from a seed."""

    PROMPT = (
        "Rewrite this movie review sentence with different words. Keep its meaning and its sentiment. "
        "Answer with the rewritten sentence only.\n\nSentence: {text}"
    )

    def __init__(self, config):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tessera.core.assets import asset_path

        path = asset_path("smollm2")
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def paraphrase(self, texts: list[str], seed: int) -> list[str]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": self.PROMPT.format(text=text)}], tokenize=False, add_generation_prompt=True
            )
            for text in texts
        ]
        torch.manual_seed(seed)
        outputs = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = self.tokenizer(prompts[start : start + self.config.batch_size], return_tensors="pt", padding=True)
            with torch.inference_mode():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=True,
                    temperature=self.config.temperature,
                    top_p=0.9,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            outputs += self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [_first_sentence(output) for output in outputs]


def _first_sentence(output: str) -> str:
    """The paraphrase in a generation: its first non-empty line, without a label or quotes around it."""
    line = next((line.strip() for line in output.splitlines() if line.strip()), "")
    line = re.sub(r"^(rewritten sentence|sentence|paraphrase)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip('"“”').strip()


class Backtranslate(TextAugmenter):
    """Round trip through a translator (Apertium English <-> pivot, or a SmolLM2 paraphraser)."""

    name = "backtranslate"
    Config = BacktranslateConfig

    def __init__(self, config):
        super().__init__(config)
        self._paraphraser = None

    def validate(self, composition) -> None:
        super().validate(composition)
        translator, pivot = self.config.translator, self.config.pivot
        if translator not in TRANSLATORS:
            raise ConfigError(f"augment.backtranslate.translator={translator}: choose one of {', '.join(TRANSLATORS)}")
        if translator == "apertium" and not {f"eng-{pivot}", f"{pivot}-eng"} <= apertium_pairs():
            raise ConfigError(
                f"augment=backtranslate needs Apertium's English <-> {pivot} pair, which is not installed: run "
                f"`{_APT_HINT.format(pivot=pivot)}` (Debian packages apertium and apertium-eng-{pivot}), "
                "or set augment.backtranslate.translator=smollm2"
            )

    def variants(self, texts: list[str], seed: int) -> list[list[str]]:
        if not texts:
            return []
        if self.config.translator == "apertium":
            pivot = self.config.pivot
            rounds = [_apertium(_apertium(texts, f"eng-{pivot}"), f"{pivot}-eng")]
        else:
            if self._paraphraser is None:
                self._paraphraser = _SmolLM2Paraphraser(self.config)
            rounds = [self._paraphraser.paraphrase(texts, seed * 1000 + copy) for copy in range(self.config.copies)]
        return [[self._accept(text, found[i]) for found in rounds] for i, text in enumerate(texts)]

    def _accept(self, original: str, paraphrase: str) -> str | None:
        """``paraphrase`` tidied to the original's style, or ``None`` when it changed the protected words."""
        paraphrase = re.sub(r"\s+", " ", paraphrase).strip()
        if original == original.lower():
            paraphrase = paraphrase.lower()
        count = lambda text: sum(word in self.protected for word in Words(text).list())  # noqa: E731
        if not paraphrase or count(paraphrase) != count(original):
            return None
        return paraphrase
