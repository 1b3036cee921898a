"""The server's view of drift: the last ``window`` served inputs' features, judged against the reference after
every request once the window holds ``min_window`` inputs, and ADWIN change detectors fed every input."""

from __future__ import annotations

from collections import deque

from tessera.monitor.drift import ChangeDetectors, FeatureDrift, Thresholds, compare
from tessera.monitor.features import FEATURES


class DriftWindow:
    """A sliding window of served features with the drift state: ``drifting`` flips when a judgement finds a
    drifted feature where the last found none, or the other way round."""

    def __init__(self, reference, thresholds: Thresholds):
        self.reference, self.thresholds = reference, thresholds
        self.values = {name: deque(maxlen=thresholds.window) for name in FEATURES}
        self.detectors = ChangeDetectors(reference, thresholds.adwin_delta)
        self.drifting = False
        self.last: list[FeatureDrift] = []

    @property
    def size(self) -> int:
        """How many served inputs the window holds."""
        return len(self.values["label"])

    def add(self, records: list[dict]) -> list[str]:
        """Add served records (features, ``label``, ``confidence``); the features ADWIN found a change in."""
        changed = []
        for record in records:
            for name in FEATURES:
                self.values[name].append(record.get(name))
            changed += self.detectors.update(record)
        return changed

    def judge(self) -> str | None:
        """Compare the window with the reference (when it holds ``min_window`` inputs): ``"started"`` or
        ``"stopped"`` when the drift state changed, else None. The comparison is kept in :attr:`last`."""
        if self.size < self.thresholds.min_window:
            return None
        self.last = compare(
            self.reference, {name: list(values) for name, values in self.values.items()}, self.thresholds
        )
        drifting = any(found.drifted for found in self.last)
        if drifting == self.drifting:
            return None
        self.drifting = drifting
        return "started" if drifting else "stopped"


def describe(found: list[FeatureDrift]) -> str:
    """The drifted features of a comparison in a few words (``oov_share PSI 1.32 KS p 2e-30, ...``)."""
    parts = []
    for item in found:
        if item.drifted:
            ks = f" KS p {item.p_value:.2g}" if item.p_value is not None else ""
            parts.append(f"{item.feature} PSI {item.psi:.3f}{ks}")
    return ", ".join(parts) or "no feature beyond its threshold"
