"""The main job's kind of run served for real: MiniLM + LoRA (the default composition, few steps) exported merged,
served by vLLM, its /classify answering through the openai client what the run itself predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tessera
from test_serve import Served

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
        answer = client.post("/classify", cast_to=object,
                             body={"model": "minilm-movie_reviews", "input": [row["text"] for row in rows]})
    finally:
        served.stop()
    got = np.array([item["probs"] for item in answer["data"]])
    np.testing.assert_allclose(got, [row["probabilities"] for row in rows], atol=1e-4)
    assert [item["label"] for item in answer["data"]] == [["negative", "positive"][row["prediction"]] for row in rows]
