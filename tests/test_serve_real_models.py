"""The real packaged models served for real, through the openai client: the main job's kind of run (MiniLM + LoRA,
the default composition, few steps) answers /classify what the run itself predicted, and SmolLM2-135M-Instruct
answers a chat completion."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_serve import Served

from conftest import tessera

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("minilm") / "run"
    result = tessera("train", "trainer.max_steps=30", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_the_served_minilm_classifier_answers_what_the_run_predicted(run):
    from openai import OpenAI

    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:100]
    served = Served(run)
    try:
        assert served.models == ["minilm-movie_reviews"]
        client = OpenAI(base_url=served.url, api_key="unused")
        answer = client.post(
            "/classify", cast_to=object, body={"model": "minilm-movie_reviews", "input": [row["text"] for row in rows]}
        )
    finally:
        served.stop()
    got = np.array([item["probs"] for item in answer["data"]])
    np.testing.assert_allclose(got, [row["probabilities"] for row in rows], atol=1e-4)
    assert [item["label"] for item in answer["data"]] == [["negative", "positive"][row["prediction"]] for row in rows]


def test_smollm2_answers_a_chat_completion():
    from openai import OpenAI

    from tessera.core.assets import asset_path

    served = Served(asset_path("smollm2"))
    try:
        assert served.models == ["smollm2"]
        client = OpenAI(base_url=f"{served.url}/v1", api_key="unused")
        question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        answers = [
            client.chat.completions.create(model="smollm2", messages=question, max_tokens=16, temperature=0)
            .choices[0]
            .message.content
            for _ in range(2)
        ]
    finally:
        served.stop()
    assert "Paris" in answers[0] and answers[0] == answers[1]
