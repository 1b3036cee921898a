"""``stacking``: a logistic-regression meta-classifier on the members' concatenated class probabilities (Wolpert,
1992), fitted on the validation split only, its regularisation strength chosen by cross-validation there."""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.run import Composition
from tessera.core.techniques import EnsembleConfig, OutputCombiner


@dataclass
class StackingConfig(EnsembleConfig):
    """The meta-classifier's search: the inverse regularisation strengths tried and the cross-validation folds."""

    #: The values of ``C`` (inverse L2 strength) that cross-validation on the validation split chooses from.
    cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    #: Stratified folds of the validation split (fewer when the rarest class has fewer examples).
    folds: int = 5
    #: Seed of the fold assignment.
    seed: int = 0


def validation_is_empty(data_cfg) -> bool:
    """Whether the data config leaves the validation split empty whatever the data holds: no validation file, no
    saved validation split, and no fraction of the examples carved for it (see :func:`tessera.core.data.load_splits`)."""
    from pathlib import Path

    if data_cfg.get("limit_eval") == 0:
        return True
    if data_cfg.get("validation_path") or data_cfg.get("validation_fraction", 0) > 0:
        return False
    if data_cfg.get("format") == "hf_disk" and data_cfg.get("path"):
        return not (Path(data_cfg.path).expanduser() / "validation").is_dir()
    return True


class Stacking(OutputCombiner):
    """A multinomial logistic regression on the members' concatenated validation probabilities, ``C`` chosen by
    stratified cross-validation on the validation split (never the test split); its coefficients go into
    ``ensemble.json``, so serving reproduces the stage's predictions exactly. It learns how much each member
    counts, so it takes no ``weights``."""

    name = "stacking"
    Config = StackingConfig

    def __init__(self, config):
        super().__init__(config)
        self.coefficients = self.intercepts = self.classes = None
        self.c = self.examples = None

    def validate(self, composition: Composition) -> None:
        if self.config.weights is not None:
            raise IncompatibleError(
                self.label, f"weights={list(self.config.weights)}", "stacking learns the members' weights: unset them"
            )
        if validation_is_empty(composition.cfg.data):
            raise ConfigError(
                f"{self.label} fits its meta-classifier on the validation split, and data={composition.cfg.data.name} "
                "has none: set data.validation_fraction above 0 or data.validation_path"
            )
        if self.config.folds < 2 or not self.config.cs:
            raise ConfigError(f"{self.label}: folds must be at least 2 and cs must list at least one value")
        super().validate(composition)

    def fit(self, probabilities, labels) -> None:
        import numpy as np
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        labels = np.asarray(labels)
        counts = np.unique(labels, return_counts=True)[1]
        if len(labels) == 0 or len(counts) < 2 or counts.min() < 2:
            raise ConfigError(
                f"{self.label} needs a validation split with at least two examples of at least two classes to "
                f"cross-validate on, and has {len(labels)} examples: add validation data (data.validation_fraction)"
            )
        folds = StratifiedKFold(min(self.config.folds, int(counts.min())), shuffle=True, random_state=self.config.seed)
        model = LogisticRegressionCV(
            Cs=list(self.config.cs),
            cv=folds,
            scoring="neg_log_loss",
            max_iter=1000,
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
        )
        model.fit(self.features(probabilities), labels)
        self.coefficients, self.intercepts, self.classes = model.coef_, model.intercept_, model.classes_
        self.c = float(np.ravel(model.C_)[0])
        self.examples = len(labels)

    @staticmethod
    def features(probabilities):
        """The meta-classifier's inputs: the members' probabilities side by side, ``[examples, members * classes]``."""
        import numpy as np

        return np.concatenate([np.asarray(p, dtype=np.float64) for p in probabilities], axis=1)

    def combine(self, probabilities, weights):
        import numpy as np

        if self.coefficients is None:
            raise ConfigError(f"{self.label} combines nothing before it is fitted (or its state loaded)")
        scores = self.features(probabilities) @ self.coefficients.T + self.intercepts
        if scores.shape[1] == 1:  # two classes: one logit for the second
            scores = np.concatenate([np.zeros_like(scores), scores], axis=1)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        fitted = scores / scores.sum(axis=1, keepdims=True)
        classes = probabilities[0].shape[1]
        full = np.zeros((fitted.shape[0], classes))
        full[:, self.classes] = fitted  # a class absent from the validation split gets probability 0
        return full

    def state(self) -> dict:
        return {
            "C": self.c,
            "examples": self.examples,
            "coefficients": self.coefficients.tolist(),
            "intercepts": self.intercepts.tolist(),
            "classes": self.classes.tolist(),
        }

    def load_state(self, state: dict) -> None:
        import numpy as np

        self.c, self.examples = state["C"], state["examples"]
        self.coefficients = np.asarray(state["coefficients"], dtype=np.float64)
        self.intercepts = np.asarray(state["intercepts"], dtype=np.float64)
        self.classes = np.asarray(state["classes"], dtype=np.int64)
