"""The main job end to end on the real packaged model and data: MiniLM + LoRA on the movie-review sentences."""

import json

import numpy as np
import pytest

from conftest import load_json, tessera, trained_max_length


@pytest.mark.slow
def test_main_job_reaches_the_accuracy_target_and_its_export_reproduces_it(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run_dir = tmp_path / "main"
    result = tessera("train", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = load_json(run_dir / "metrics.json")
    assert metrics["test"]["examples"] == 800
    assert metrics["test"]["accuracy"] >= 0.80, metrics["test"]

    export = run_dir / "export"
    classifier = pipeline(
        "text-classification",
        model=AutoModelForSequenceClassification.from_pretrained(export),
        tokenizer=AutoTokenizer.from_pretrained(export),
        top_k=None,
        truncation=True,
        max_length=trained_max_length(run_dir),
    )
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()][:200]
    scored = classifier([row["text"] for row in rows], batch_size=50)
    got = np.array(
        [
            [next(s["score"] for s in scores if s["label"] == label) for label in ("negative", "positive")]
            for scores in scored
        ]
    )
    np.testing.assert_allclose(got, [row["probabilities"] for row in rows], atol=1e-4)
