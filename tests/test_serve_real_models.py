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


def drift_metrics(url: str) -> dict:
    """The ``tessera_drift_*`` samples of the server's ``/metrics`` by ``(name, feature)``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    return {
        (sample.name, sample.labels.get("feature")): sample.value
        for family in families
        for sample in family.samples
        if sample.name.startswith("tessera_drift_")
    }


def test_served_news_sentences_drift_and_movie_reviews_do_not(run, tmp_path):
    """The MiniLM run served for real: 200 test-split movie-review sentences, one a request, then 200 BBC News
    sentences; drift is flagged (metrics, server log, tessera monitor) for the news and never for the reviews."""
    import csv
    import random
    import re
    import urllib.request

    from tessera.core.assets import asset_path
    from tessera.monitor.traffic import read_records

    reviews = [json.loads(line)["text"] for line in (run / "predictions.jsonl").read_text().splitlines()][:200]
    with (asset_path("bbc_news") / "bbc_news_sentences.csv").open(encoding="utf-8", newline="") as handle:
        news = random.Random(0).sample([row["text"] for row in csv.DictReader(handle)], 200)
    log = tmp_path / "served.jsonl"
    served = Served(run, f"traffic_log={log}")

    def classify(text: str) -> None:
        body = json.dumps({"model": "minilm-movie_reviews", "input": text}).encode()
        request = urllib.request.Request(f"{served.url}/classify", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert answer.status == 200

    try:
        assert any(
            "drift watched against the export's reference over the last 200 inputs" in line for line in served.output
        )
        for text in reviews:
            classify(text)
        in_domain = drift_metrics(served.url)
        for text in news:
            classify(text)
        shifted = drift_metrics(served.url)
    finally:
        output = served.stop()
    assert in_domain[("tessera_drift_window_inputs", None)] == 200
    assert in_domain[("tessera_drift_detected", None)] == 0
    assert not any(value for (name, _), value in in_domain.items() if name == "tessera_drift_feature_drifted")
    assert shifted[("tessera_drift_detected", None)] == 1
    assert shifted[("tessera_drift_feature_drifted", "oov_share")] == 1
    assert (
        shifted[("tessera_drift_ks_pvalue", "oov_share")] < 0.01 and shifted[("tessera_drift_psi", "oov_share")] > 0.2
    )
    # the model list is request 1, the reviews 2-201: drift is first reported on a news request
    lines = output.splitlines()
    first = next(index for index, line in enumerate(lines) if "drift detected over the last" in line)
    before = [int(n) for n in re.findall(r"\(request (\d+)\)", "\n".join(lines[:first]))]
    assert max(before) > 201, lines[first]
    records = read_records(log)
    assert len(records) == 400
    for name, part, status in (("in_domain", records[:200], 0), ("shifted", records[200:], 1)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in part))
        result = tessera("monitor", str(run), "--log", str(path), "--out", str(tmp_path / name))
        assert result.returncode == status, result.stdout + result.stderr
