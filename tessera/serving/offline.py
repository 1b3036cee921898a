"""vLLM's offline ``LLM`` API on a batch of texts, run as ``python -m tessera.serving.offline SPEC.json``.

:mod:`tessera.serving.predict` starts this module in a subprocess (vLLM's offline API re-imports ``__main__`` in
its workers, and a subprocess lets the caller remove every temporary file vLLM leaves). The spec names the engine
arguments, the task, the texts and where to write the results (a JSON list: probability lists for
classification, completion texts for generation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run(spec: dict) -> list:
    """Classify or generate for ``spec["texts"]``; one result per text, in order."""
    from vllm import LLM, SamplingParams

    llm = LLM(**spec["engine"])
    texts = spec["texts"]
    lora = None
    if spec.get("adapter"):
        from vllm.lora.request import LoRARequest

        name, path = spec["adapter"]
        lora = LoRARequest(name, 1, path)
    if spec["kind"] == "classify":
        outputs = llm.classify(texts, use_tqdm=False, tokenization_kwargs=spec.get("tokenization"))
        return [list(map(float, output.outputs.probs)) for output in outputs]
    sampling = SamplingParams(temperature=spec["temperature"], max_tokens=spec["max_tokens"], seed=0)
    if spec.get("chat"):
        conversations = [[{"role": "user", "content": text}] for text in texts]
        outputs = llm.chat(conversations, sampling, use_tqdm=False, lora_request=lora)
    else:
        outputs = llm.generate(texts, sampling, use_tqdm=False, lora_request=lora)
    return [output.outputs[0].text for output in outputs]


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    Path(spec["result"]).write_text(json.dumps(run(spec)), encoding="utf-8")
