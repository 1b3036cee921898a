"""Drift of served features against the reference: a two-sample KS test (scipy) and the population stability index
on each numeric feature, PSI on the predicted-label shares, and change points found online by river's ADWIN.

PSI is ``sum((s - r) * ln(s / r))`` over bins, ``r`` and ``s`` the reference's and the served sample's shares of
each bin. Numeric features are cut at the reference's quintiles (repeated edges merged); labels are their own bins.
Every bin's count gets 0.5 added before the shares are taken, so an empty bin gives a large but finite term.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tessera.monitor.features import LABEL_FEATURE, NUMERIC_FEATURES

#: Quantile bins of a numeric feature for PSI: quintiles. PSI between two samples of one distribution is about
#: (bins - 1) * (1/n + 1/m) on average, so with deciles a window of 100 against a reference of 200 would sit at
#: 0.14 and cross 0.2 by chance alone; with quintiles it sits at 0.06.
PSI_BINS = 5
#: Added to every bin's count before shares are taken.
PSI_SMOOTHING = 0.5


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted, and over how much served traffic (the ``serve`` config's ``drift_*``)."""

    #: A feature drifted when its PSI is above this...
    psi: float = 0.2
    #: ... or its KS test's p-value below this.
    ks_pvalue: float = 0.01
    #: Served inputs in the sliding window.
    window: int = 200
    #: No judgement before the window holds this many inputs.
    min_window: int = 100
    #: ADWIN's confidence parameter (smaller: fewer, surer change points).
    adwin_delta: float = 0.002

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        """The thresholds of a ``ServeConfig``; a ``ConfigError`` naming the setting that is out of range."""
        from tessera.core.errors import ConfigError

        if not 2 <= settings.drift_min_window <= settings.drift_window:
            raise ConfigError(
                f"drift_min_window={settings.drift_min_window} must be at least 2 and at most "
                f"drift_window={settings.drift_window}: lower drift_min_window or raise drift_window"
            )
        for name in ("drift_ks_pvalue", "drift_adwin_delta"):
            if not 0 < getattr(settings, name) < 1:
                raise ConfigError(f"{name}={getattr(settings, name)} must be between 0 and 1 (exclusive)")
        if settings.drift_psi <= 0:
            raise ConfigError(f"drift_psi={settings.drift_psi} must be above 0 (0.1 small, 0.2 large drift)")
        return cls(
            settings.drift_psi,
            settings.drift_ks_pvalue,
            settings.drift_window,
            settings.drift_min_window,
            settings.drift_adwin_delta,
        )


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison: KS statistic and p-value (None for labels), PSI, and whether it drifted."""

    feature: str
    served: int
    psi: float
    drifted: bool
    ks_statistic: float | None = None
    p_value: float | None = None


def _shares(counts: list[float]) -> list[float]:
    total = sum(counts) + PSI_SMOOTHING * len(counts)
    return [(count + PSI_SMOOTHING) / total for count in counts]


def psi_of_counts(reference: list[float], served: list[float]) -> float:
    """The PSI of two histograms over the same bins."""
    import math

    return sum((s - r) * math.log(s / r) for r, s in zip(_shares(reference), _shares(served)))


def psi_numeric(reference: list[float], served: list[float]) -> float:
    """The PSI of ``served`` against ``reference`` over the reference's decile bins."""
    import numpy as np

    edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    bins = len(edges) + 1
    count = lambda values: np.bincount(np.searchsorted(edges, values, side="right"), minlength=bins)  # noqa: E731
    return psi_of_counts(count(reference).tolist(), count(served).tolist())


def compare(reference, served: dict[str, list], thresholds: Thresholds) -> list[FeatureDrift]:
    """Each feature of ``served`` (lists of values by feature name, ``label``: predicted label names) against
    the :class:`~tessera.monitor.reference.DriftReference`; features with no served value are left out."""
    from scipy.stats import ks_2samp

    found = []
    for name in NUMERIC_FEATURES:
        values = [value for value in served.get(name, ()) if value is not None]
        if not values or not reference.samples[name]:
            continue
        test = ks_2samp(reference.samples[name], values)
        psi = psi_numeric(reference.samples[name], values)
        drifted = psi > thresholds.psi or test.pvalue < thresholds.ks_pvalue
        found.append(FeatureDrift(name, len(values), psi, drifted, float(test.statistic), float(test.pvalue)))
    labels = served.get(LABEL_FEATURE) or []
    if labels:
        served_counts = [sum(label == name for label in labels) for name in reference.labels]
        psi = psi_of_counts([reference.label_counts.get(name, 0) for name in reference.labels], served_counts)
        found.append(FeatureDrift(LABEL_FEATURE, len(labels), psi, psi > thresholds.psi))
    return found


class ChangeDetectors:
    """One ADWIN per numeric feature, primed with the reference sample (shuffled, seed 0), so that a change point
    found later is a change of the served stream away from the reference (or within it)."""

    def __init__(self, reference, delta: float):
        from river.drift import ADWIN

        self.detectors = {}
        for name in NUMERIC_FEATURES:
            detector, values = ADWIN(delta=delta), list(reference.samples[name])
            random.Random(0).shuffle(values)
            for value in values:
                detector.update(value)
            self.detectors[name] = detector

    def update(self, features: dict) -> list[str]:
        """Feed one served input's features; the features whose ADWIN found a change at it."""
        changed = []
        for name, detector in self.detectors.items():
            value = features.get(name)
            if value is not None:
                detector.update(value)
                if detector.drift_detected:
                    changed.append(name)
        return changed
