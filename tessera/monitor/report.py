"""``tessera monitor``'s report on a served-traffic log: the whole log against the reference (KS, PSI, drifted per
feature), the same over consecutive windows (drift over time), ADWIN's change points, two PNG plots and
``monitor_report.md``."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tessera.monitor.drift import ChangeDetectors, FeatureDrift, Thresholds, compare
from tessera.monitor.features import FEATURES, LABEL_FEATURE, NUMERIC_FEATURES

HISTOGRAMS = "monitor_histograms.png"
OVER_TIME = "monitor_drift.png"
REPORT = "monitor_report.md"


@dataclass
class Window:
    """One window of the log (records ``start`` to ``end``, 0-based, end excluded) and its comparison."""

    start: int
    end: int
    found: list[FeatureDrift]

    @property
    def drifted(self) -> bool:
        return any(item.drifted for item in self.found)


@dataclass
class MonitorReport:
    """Everything ``tessera monitor`` prints and plots."""

    overall: list[FeatureDrift]
    windows: list[Window]
    #: ``(feature, record number from 1, unix time)`` of every change point ADWIN found.
    changes: list[tuple[str, int, float]]
    records: int
    thresholds: Thresholds

    @property
    def drifted(self) -> bool:
        return any(item.drifted for item in self.overall)


def _columns(records: list[dict]) -> dict[str, list]:
    return {name: [record.get(name) for record in records] for name in FEATURES}


def window_bounds(count: int, thresholds: Thresholds) -> list[tuple[int, int]]:
    """Consecutive windows of ``thresholds.window`` records, half a window apart; a log shorter than a window is
    one window when it holds ``min_window`` records."""
    size, step = thresholds.window, max(1, thresholds.window // 2)
    if count < size:
        return [(0, count)] if count >= thresholds.min_window else []
    return [(start, start + size) for start in range(0, count - size + 1, step)]


def build_report(reference, records: list[dict], thresholds: Thresholds) -> MonitorReport:
    """Compare the log's ``records`` with the reference, overall and window by window, and find change points."""
    overall = compare(reference, _columns(records), thresholds)
    windows = [
        Window(start, end, compare(reference, _columns(records[start:end]), thresholds))
        for start, end in window_bounds(len(records), thresholds)
    ]
    detectors, changes = ChangeDetectors(reference, thresholds.adwin_delta), []
    for number, record in enumerate(records, 1):
        changes += [(feature, number, record["time"]) for feature in detectors.update(record)]
    return MonitorReport(overall, windows, changes, len(records), thresholds)


def _cell(value, digits=".3g") -> str:
    return "-" if value is None else format(value, digits)


def feature_table(found: list[FeatureDrift]) -> list[str]:
    """The per-feature table (Markdown rows; also printed)."""
    rows = ["| feature | served | KS statistic | KS p-value | PSI | drifted |", "|---|---|---|---|---|---|"]
    for item in found:
        rows.append(
            f"| {item.feature} | {item.served} | {_cell(item.ks_statistic, '.3f')} | {_cell(item.p_value)} | "
            f"{item.psi:.3f} | {'yes' if item.drifted else 'no'} |"
        )
    return rows


def summary_lines(report: MonitorReport, reference, log: Path) -> list[str]:
    """The printed report."""
    t = report.thresholds
    lines = [
        f"served-traffic log {log}: {report.records} inputs against the reference of {reference.examples} "
        f"{reference.split} examples (drift: PSI > {t.psi} or KS p < {t.ks_pvalue})",
        *feature_table(report.overall),
        f"drift: {'yes' if report.drifted else 'no'}",
    ]
    drifted = [window for window in report.windows if window.drifted]
    lines.append(
        f"windows of {t.window} inputs, {max(1, t.window // 2)} apart: {len(drifted)} of {len(report.windows)} drifted"
        + (f" (first: inputs {drifted[0].start + 1}-{drifted[0].end})" if drifted else "")
    )
    if report.changes:
        points = ", ".join(f"{feature} at input {number}" for feature, number, _ in report.changes)
        lines.append(f"ADWIN change points (delta {t.adwin_delta}): {points}")
    else:
        lines.append(f"ADWIN change points (delta {t.adwin_delta}): none")
    return lines


def _save(figure, path: Path) -> None:
    """Save ``figure`` as PNG at ``path`` atomically."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110, format="png")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def plot_histograms(reference, records: list[dict], path: Path) -> None:
    """Reference against served: a histogram per numeric feature and the label shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = _columns(records)
    figure, axes = plt.subplots(1, len(FEATURES), figsize=(4 * len(FEATURES), 3.4))
    for axis, name in zip(axes, NUMERIC_FEATURES):
        served = [value for value in columns[name] if value is not None]
        both = np.concatenate([reference.samples[name], served]) if served else np.asarray(reference.samples[name])
        bins = np.histogram_bin_edges(both, bins=20)
        axis.hist(reference.samples[name], bins=bins, density=True, alpha=0.5, label="reference")
        axis.hist(served, bins=bins, density=True, alpha=0.5, label="served")
        axis.set_title(name)
    labels, positions = reference.labels, np.arange(len(reference.labels))
    total = max(reference.examples, 1)
    served_labels = columns[LABEL_FEATURE]
    axes[-1].bar(positions - 0.2, [reference.label_counts.get(n, 0) / total for n in labels], 0.4, label="reference")
    axes[-1].bar(
        positions + 0.2, [served_labels.count(n) / max(len(served_labels), 1) for n in labels], 0.4, label="served"
    )
    axes[-1].set_xticks(positions, labels)
    axes[-1].set_title("predicted label share")
    axes[-1].legend()
    axes[0].legend()
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_over_time(report: MonitorReport, path: Path) -> None:
    """PSI and KS p-value of each feature window by window, with the thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (psi_axis, p_axis) = plt.subplots(1, 2, figsize=(11, 3.6))
    ends = [window.end for window in report.windows]
    for name in FEATURES:
        psi = [next((i.psi for i in w.found if i.feature == name), None) for w in report.windows]
        psi_axis.plot(ends, psi, marker="o", label=name)
        if name in NUMERIC_FEATURES:
            p = [next((i.p_value for i in w.found if i.feature == name), None) for w in report.windows]
            p_axis.plot(ends, [max(v, 1e-300) if v is not None else None for v in p], marker="o", label=name)
    psi_axis.axhline(report.thresholds.psi, color="red", linestyle="--", linewidth=1)
    p_axis.axhline(report.thresholds.ks_pvalue, color="red", linestyle="--", linewidth=1)
    p_axis.set_yscale("log")
    for _, number, _ in report.changes:
        psi_axis.axvline(number, color="grey", linestyle=":", linewidth=1)
    psi_axis.set(title="PSI per window (dotted: ADWIN change points)", xlabel="last input of the window")
    p_axis.set(title="KS p-value per window", xlabel="last input of the window")
    psi_axis.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def markdown(report: MonitorReport, reference, log: Path) -> str:
    """``monitor_report.md``."""
    lines = ["# Served-traffic monitoring report", "", *summary_lines(report, reference, log)[:1], ""]
    lines += [*feature_table(report.overall), "", f"Drift: **{'yes' if report.drifted else 'no'}**.", ""]
    lines += ["## Over time", "", "| inputs | drifted features |", "|---|---|"]
    for window in report.windows:
        names = ", ".join(item.feature for item in window.found if item.drifted) or "none"
        lines.append(f"| {window.start + 1}-{window.end} | {names} |")
    lines += ["", *summary_lines(report, reference, log)[-1:], ""]
    lines += [f"![reference vs served]({HISTOGRAMS})", "", f"![drift over time]({OVER_TIME})", ""]
    return "\n".join(lines)


def write_report(report: MonitorReport, reference, records: list[dict], log: Path, out: Path) -> list[Path]:
    """Write the plots and ``monitor_report.md`` into ``out``; their paths."""
    from tessera.core.files import write_text

    out.mkdir(parents=True, exist_ok=True)
    plot_histograms(reference, records, out / HISTOGRAMS)
    written = [out / HISTOGRAMS]
    if report.windows:
        plot_over_time(report, out / OVER_TIME)
        written.append(out / OVER_TIME)
    write_text(out / REPORT, markdown(report, reference, log))
    return [*written, out / REPORT]
