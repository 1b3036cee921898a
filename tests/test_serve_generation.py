"""A real vLLM server on a tiny exported causal LM (Llama, head_dim 32, the real SmolLM2 tokenizer) whose LoRA
adapter is served as a named model beside its base: completions and chat through the openai client and plain
HTTP, deterministic at temperature 0, the adapter's name changes the output and matches the merged export, bad
requests answered 4xx while the server keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from test_serve import Served

from conftest import tessera

PROMPTS = ["The capital of France is", "Once upon a time", "The movie was"]


def build_run(root):
    """A run directory laid out as ``tessera train`` writes one: the base model, its LoRA adapter (unmerged, under
    export/adapters/lora) and the merged export."""
    import peft
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tessera.core.assets import asset_path

    tokenizer = AutoTokenizer.from_pretrained(asset_path("smollm2"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = root / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = peft.get_peft_model(
        LlamaForCausalLM.from_pretrained(base),
        peft.LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
            task_type=peft.TaskType.CAUSAL_LM,
        ),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.5)
    run = root / "run"
    model.save_pretrained(run / "export" / "adapters" / "lora")
    model.merge_and_unload().save_pretrained(run / "export")
    tokenizer.save_pretrained(run / "export")
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"model: {{name: tiny_llama, pretrained: '{base}', random_init: false}}\ndata: {{name: prompts}}\n"
        "serve: {max_model_len: 128}\n"
    )
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def server(run):
    served = Served(run, "dtype=float32")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def complete(client, model, prompt, **options):
    answer = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, **options)
    return answer.choices[0].text


def test_the_base_and_its_adapter_are_served_by_name(server, client):
    assert server.models == ["tiny_llama", "lora"]
    assert "LoRA adapters lora served as named models" in "".join(server.output)
    assert sorted(model.id for model in client.models.list()) == ["lora", "tiny_llama"]


def test_generation_at_temperature_zero_is_deterministic(client):
    first = [complete(client, "lora", prompt) for prompt in PROMPTS]
    assert first == [complete(client, "lora", prompt) for prompt in PROMPTS]
    batched = client.completions.create(model="lora", prompt=PROMPTS, max_tokens=12, temperature=0)
    assert [choice.text for choice in sorted(batched.choices, key=lambda c: c.index)] == first


def test_the_adapter_name_changes_the_output_to_the_merged_export(client, run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "export")
    merged = AutoModelForCausalLM.from_pretrained(run / "export", dtype=torch.float32).eval()
    for prompt in PROMPTS:
        adapted, base = complete(client, "lora", prompt), complete(client, "tiny_llama", prompt)
        assert adapted != base
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            reference = merged.generate(**ids, max_new_tokens=12, do_sample=False)
        expected = tokenizer.decode(reference[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert adapted == expected


def test_chat_and_streaming_through_the_openai_client(client):
    chat = client.chat.completions.create(
        model="lora", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
    streamed = client.completions.create(model="lora", prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == complete(client, "lora", PROMPTS[0])


def post(url, body: bytes):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_bad_requests_over_plain_http_get_4xx_and_the_server_keeps_serving(server):
    url = f"{server.url}/v1/completions"
    too_long = json.dumps({"model": "lora", "prompt": "word " * 300, "max_tokens": 4}).encode()
    status, answer = post(url, too_long)
    assert status == 400 and "context length" in answer["error"]["message"]
    status, answer = post(url, json.dumps({"model": "nope", "prompt": "x", "max_tokens": 2}).encode())
    assert status == 404 and "nope" in answer["error"]["message"]
    assert post(url, b'{"model": "lora", "prompt": ')[0] == 400
    status, answer = post(url, json.dumps({"model": "lora", "prompt": PROMPTS[1], "max_tokens": 3}).encode())
    assert status == 200 and answer["usage"]["completion_tokens"] == 3


def test_predict_generates_what_the_server_generates(run, client, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    result = tessera(
        "predict", str(run), str(prompts), "--engine", "transformers", "--max-tokens", "12", "dtype=float32"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "prompts.predictions.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS
    assert [row["completion"] for row in rows] == [complete(client, "lora", prompt) for prompt in PROMPTS]
