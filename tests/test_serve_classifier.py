"""A real vLLM server on the smoke run's exported classifier (tiny BERT, merged LoRA), behind an API key:
/classify through the openai client and plain HTTP, probabilities equal to the in-process model's, bad requests,
metrics, a clean stop; and ``tessera predict`` on a file through vLLM and through transformers."""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_serve import Served

from conftest import tessera, trained_max_length

KEY = "test-key"


@pytest.fixture(scope="module")
def server(smoke_run):
    served = Served(smoke_run, "--api-key", KEY)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def sentences(smoke_run):
    rows = [json.loads(line) for line in (smoke_run / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows[:48]], np.array([row["probabilities"] for row in rows[:48]])


def in_process(export, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    batch = AutoTokenizer.from_pretrained(export)(
        texts, truncation=True, max_length=trained_max_length(export.parent), padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return torch.softmax(model(**batch).logits, dim=-1).double().numpy()


def post(url, body: bytes, key=KEY):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_ready_line_names_the_served_model(server):
    assert server.models == ["tiny-movie_reviews"]
    assert "served merged into the export" in "".join(server.output)


def test_probabilities_through_the_openai_client_equal_the_in_process_model(server, smoke_run, sentences):
    from openai import OpenAI

    texts, _ = sentences
    client = OpenAI(base_url=server.url, api_key=KEY)
    answer = client.post("/classify", cast_to=object, body={"model": "tiny-movie_reviews", "input": texts})
    got = np.array([item["probs"] for item in answer["data"]])
    np.testing.assert_allclose(got, in_process(smoke_run / "export", texts), atol=1e-4)
    assert [item["label"] for item in answer["data"]] == [["negative", "positive"][i] for i in got.argmax(1)]


def test_probabilities_over_plain_http_equal_what_the_run_predicted(server, sentences):
    texts, expected = sentences
    body = json.dumps({"model": "tiny-movie_reviews", "input": texts}).encode()
    status, answer = post(f"{server.url}/classify", body)
    assert status == 200
    np.testing.assert_allclose([item["probs"] for item in answer["data"]], expected, atol=1e-4)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, sentences):
    assert (
        post(
            f"{server.url}/classify",
            b'{"model": "tiny-movie_reviews", "input": ',
        )[0]
        == 400
    )
    status, answer = post(f"{server.url}/classify", json.dumps({"model": "nope", "input": "x"}).encode())
    assert status == 404 and "nope" in answer["error"]["message"]
    assert (
        post(f"{server.url}/classify", json.dumps({"model": "tiny-movie_reviews", "input": "x"}).encode(), key=None)[0]
        == 401
    )
    status, answer = post(f"{server.url}/classify", json.dumps({"input": sentences[0][:2]}).encode())
    assert status == 200 and len(answer["data"]) == 2


def test_metrics_stay_reachable_and_count_tessera_requests(server):
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as answer:
        metrics = answer.read().decode()
    assert 'tessera_requests_total{method="POST",route="/classify",status="200"}' in metrics
    assert "tessera_request_duration_seconds_bucket" in metrics and "vllm:" in metrics


def test_requests_are_logged_with_their_latency(server):
    post(f"{server.url}/classify", json.dumps({"input": "fine"}).encode())
    output = server.stop()
    assert " POST /classify 200 " in output and " ms (request " in output


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sentences):
    path = tmp_path_factory.mktemp("predict") / "reviews.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *[[i, text] for i, text in enumerate(sentences[0])]])
    return path


def test_predict_through_vllm_writes_the_run_predictions_next_to_the_input(smoke_run, inputs, sentences):
    result = tessera("predict", str(smoke_run), str(inputs))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "48 predictions (vllm)" in result.stderr
    rows = [json.loads(line) for line in (inputs.parent / "reviews.predictions.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == sentences[0]
    got = [[row["probabilities"]["negative"], row["probabilities"]["positive"]] for row in rows]
    np.testing.assert_allclose(got, sentences[1], atol=1e-4)
    assert not list(inputs.parent.glob(".*")), "no partial files next to the output"


def test_predict_through_transformers_agrees(smoke_run, inputs, sentences, tmp_path):
    output = tmp_path / "out.jsonl"
    result = tessera("predict", str(smoke_run), str(inputs), "--engine", "transformers", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    got = [[row["probabilities"]["negative"], row["probabilities"]["positive"]] for row in rows]
    np.testing.assert_allclose(got, sentences[1], atol=1e-4)
