"""Composition at serving time: a run trained with knowledge-graph text injection (kg=text_injection) is served so
that clients send raw text and the model sees it enriched exactly as in training."""

from __future__ import annotations

import csv
import json
import urllib.request

import numpy as np
import pytest
from test_serve import Served

from conftest import plugins, tessera, trained_max_length

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kg") / "run"
    result = tessera("train", "experiment=smoke", "kg=text_injection", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def probabilities(export, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    batch = AutoTokenizer.from_pretrained(export)(
        texts, truncation=True, max_length=trained_max_length(export.parent), padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return torch.softmax(model(**batch).logits, dim=-1).double().numpy()


def test_raw_inputs_are_enriched_by_the_run_retriever_before_the_model_sees_them(run):
    from tessera.core.assets import asset_path
    from tessera.plugins.retrievers.text_injection import injector_from_export

    with (asset_path("movie_reviews") / "sentence_polarity.csv").open(newline="") as handle:
        raw = [row["text"] for row in csv.DictReader(handle)][:24]
    injector = injector_from_export(run / "export", plugins())
    enriched = [injector.inject(text) for text in raw]
    assert sum(e != r for e, r in zip(enriched, raw)) >= len(raw) // 2
    served = Served(run)
    try:
        assert "kg=text_injection enriches every input" in "".join(served.output)
        request = urllib.request.Request(
            f"{served.url}/classify",
            data=json.dumps({"input": raw}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            got = np.array([item["probs"] for item in json.load(answer)["data"]])
    finally:
        served.stop()
    # The tiny smoke model's probabilities move by ~1e-5 between raw and enriched texts; vLLM and the in-process
    # model agree to ~1e-8 in float32, so a 1e-6 tolerance tells the two apart.
    assert np.abs(got - probabilities(run / "export", enriched)).max() < 1e-6
    assert np.abs(got - probabilities(run / "export", raw)).max() > 1e-5
