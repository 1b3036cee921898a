"""Each objective trains the real packaged model on real text and its training loss falls: MiniLM for the encoder
objectives (on the unlabelled full reviews), SmolLM2-135M-Instruct for the causal ones. A few examples, seen again
every epoch, keep each run short; the tiny-model tests in test_objectives.py cover the mechanics."""

import numpy as np
import pytest

from conftest import load_json, tessera

SHORT = [
    "data.max_length=64",
    "trainer.batch_size=8",
    "data.limit_eval=8",
    "trainer.warmup_ratio=0",
    "trainer.checkpoint_every=0",
]
ENCODER = ["model=minilm", "adapter=none", "data=full_reviews", "trainer.learning_rate=2e-4"]
DECODER = ["model=smollm2", "adapter=lora", "trainer.learning_rate=2e-3"]  # 135 M parameters: LoRA keeps it short

CASES = {
    "mlm": [*ENCODER, "objective=mlm", "data.limit_train=4", "trainer.epochs=2"],
    "nsp": [*ENCODER, "objective=nsp", "data.limit_train=2", "trainer.epochs=6"],
    "sop": [*ENCODER, "objective=sop", "data.limit_train=2", "trainer.epochs=6"],
    "clm": [
        *DECODER,
        "objective=clm",
        "data=full_reviews",
        "data.limit_train=1",
        "data.limit_eval=2",
        "trainer.epochs=4",
    ],
    "instruction": [*DECODER, "objective=instruction", "data.limit_train=16", "trainer.epochs=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("objective", CASES)
def test_objective_trains_the_real_model_and_its_loss_falls(tmp_path, objective):
    result = tessera("train", *SHORT, *CASES[objective], f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [step["loss"] for step in load_json(tmp_path / "run" / "metrics.json")["train"]]
    assert len(losses) >= 6 and np.isfinite(losses).all(), losses
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
