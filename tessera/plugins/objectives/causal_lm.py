"""``clm``: causal language modelling with sequence packing; ``instruction``: the causal-LM loss on the response
tokens only, with the model's chat template, evaluated by exact match under greedy decoding."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tessera.core.batching import IGNORE_INDEX
from tessera.core.techniques import Objective, ObjectiveConfig


def _requires_decoder(objective, composition) -> None:
    from tessera.core.errors import IncompatibleError
    from tessera.core.models import is_decoder

    if not is_decoder(composition.cfg.model):
        raise IncompatibleError(
            objective.label,
            f"model={composition.cfg.model.name}",
            "it trains a causal LM head: use a decoder such as model=smollm2",
        )


def shifted_loss(outputs, labels):
    """Next-token cross-entropy: logits at position t predict ``labels`` at t + 1 (-100 ignored)."""
    import torch.nn.functional as F

    logits = outputs.logits[:, :-1].flatten(0, 1).float()
    return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


@dataclass
class CausalLMConfig(ObjectiveConfig):
    """Packing parameters."""

    #: Concatenate texts (separated by EOS) into full windows of ``data.max_length`` tokens.
    packing: bool = True


class CausalLM(Objective):
    """Predict every next token."""

    name = "clm"
    task = "causal-lm"
    Config = CausalLMConfig
    metric = "perplexity"

    def validate(self, composition):
        _requires_decoder(self, composition)

    def items(self, examples, tokenizer, max_length, seed):
        encoded = tokenizer([e["text"] for e in examples], add_special_tokens=False, verbose=False)["input_ids"]
        eos = [tokenizer.eos_token_id]
        if self.config.packing:
            stream = [token for ids in encoded for token in ids + eos]
            windows = [stream[start : start + max_length] for start in range(0, len(stream), max_length)]
        else:
            windows = [(ids + eos)[:max_length] for ids in encoded]
        return [{"input_ids": window, "lm_labels": list(window)} for window in windows if len(window) > 1]

    def loss(self, outputs, batch):
        return shifted_loss(outputs, batch["lm_labels"])


@dataclass
class InstructionConfig(ObjectiveConfig):
    """The instruction built from each labelled example, and its expected answer."""

    prompt: str = "Review: {text}\nIs this review positive or negative? Answer with one word."
    answer: str = "{label}"
    #: New tokens generated for the exact-match evaluation.
    max_new_tokens: int = 4


class Instruction(Objective):
    """Causal-LM loss on the answer tokens of chat-formatted instructions; exact-match accuracy at evaluation."""

    name = "instruction"
    task = "causal-lm"
    needs_labels = True
    Config = InstructionConfig
    metric = "exact_match"
    higher_is_better = True

    def validate(self, composition):
        _requires_decoder(self, composition)

    def prompt_ids(self, example, tokenizer) -> list[int]:
        """The chat-formatted prompt of an example, ending where the assistant's answer starts."""
        messages = [{"role": "user", "content": self.config.prompt.format(text=example["text"])}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)

    def items(self, examples, tokenizer, max_length, seed):
        found = []
        for example in examples:
            prompt = self.prompt_ids(example, tokenizer)
            answer = tokenizer(self.config.answer.format(label=example["label_text"]), add_special_tokens=False)[
                "input_ids"
            ] + [tokenizer.eos_token_id]
            prompt = prompt[-(max_length - len(answer)) :] if len(prompt) + len(answer) > max_length else prompt
            found.append({"input_ids": prompt + answer, "lm_labels": [IGNORE_INDEX] * len(prompt) + answer})
        return found

    def loss(self, outputs, batch):
        return shifted_loss(outputs, batch["lm_labels"])

    def evaluate(self, run, model, tokenizer, examples, split):
        """Accuracy of the greedy answers (written out for the test split): ``exact_match`` when the answer's first
        word is the label, ``label_accuracy`` when the answer names the right label and no other (a chatty "This
        review is positive" counts there, not in exact match)."""
        import torch

        from tessera.core.batching import collate, sequential_batches
        from tessera.core.evaluate import model_device
        from tessera.core.files import write_text

        if not examples:
            return {}
        items = [{"input_ids": self.prompt_ids(e, tokenizer)} for e in examples]
        answers = []
        model.eval()
        with torch.inference_mode():
            for indices in sequential_batches(items, run.cfg.trainer.eval_batch_size):
                batch = collate(items, indices, tokenizer.pad_token_id, model_device(model), padding_side="left")
                generated = model.generate(
                    **batch,
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                answers += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        words = [re.findall(r"[a-z]+", answer.lower()) for answer in answers]
        truths = [e["label_text"].lower() for e in examples]
        labels = set(truths)
        correct = [said[:1] == [truth] for said, truth in zip(words, truths)]
        right_label = [labels.intersection(said) == {truth} for said, truth in zip(words, truths)]
        if split == "test":
            write_text(
                run.dir / "predictions.jsonl",
                "".join(
                    json.dumps({"text": e["text"], "label": e["label_text"], "answer": answer}) + "\n"
                    for e, answer in zip(examples, answers)
                ),
            )
        return {"exact_match": sum(correct) / len(correct), "label_accuracy": sum(right_label) / len(right_label)}
