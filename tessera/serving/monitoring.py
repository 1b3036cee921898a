"""Monitoring inside the server (used by :mod:`tessera.serving.middleware`): error counts per route and, for a
classifier, what it answers on ``/classify``: predicted-label counts, a confidence histogram and, with the export's
drift reference, the served-traffic log and drift gauges, in vLLM's Prometheus registry (``/metrics``).

The launcher passes the settings as JSON in ``TESSERA_SERVE_MONITOR`` (:func:`monitor_environment`).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path

#: The route whose answers are monitored.
MONITORED_ROUTE = "/classify"
ENVIRONMENT = "TESSERA_SERVE_MONITOR"
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@functools.cache
def metrics() -> dict:
    """tessera's monitoring metrics, registered once in the default registry that vLLM's ``/metrics`` serves."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "errors": Counter(
            "tessera_request_errors", "Requests answered with status >= 400 or failed", ["route", "status"]
        ),
        "labels": Counter("tessera_predicted_labels", "Labels predicted on /classify", ["label"]),
        "confidence": Histogram(
            "tessera_prediction_confidence",
            "The predicted label's probability on /classify",
            buckets=CONFIDENCE_BUCKETS,
        ),
        "ks_statistic": Gauge("tessera_drift_ks_statistic", "KS statistic, window vs reference", ["feature"]),
        "ks_pvalue": Gauge("tessera_drift_ks_pvalue", "KS test p-value, window vs reference", ["feature"]),
        "psi": Gauge("tessera_drift_psi", "Population stability index, window vs reference", ["feature"]),
        "drifted": Gauge("tessera_drift_feature_drifted", "1 when the feature is beyond a threshold", ["feature"]),
        "drift": Gauge("tessera_drift_detected", "1 while some feature of the window is beyond a threshold"),
        "window": Gauge("tessera_drift_window_inputs", "Served inputs in the drift window"),
        "adwin": Counter("tessera_drift_adwin_changes", "Change points ADWIN found in served inputs", ["feature"]),
    }


def count_error(route: str, status: str) -> None:
    """Count a request answered with an error status (``status``: the code, or ``exception``)."""
    metrics()["errors"].labels(route, status).inc()


def traffic_log_path(target, settings) -> Path | None:
    """Where served traffic is logged: ``serve.traffic_log``, else ``RUN_DIR/monitor/served.jsonl`` when serving a
    run, else nowhere."""
    from tessera.monitor.traffic import DEFAULT_LOG

    if settings.traffic_log:
        return Path(settings.traffic_log).expanduser().resolve()
    return target.run_dir / DEFAULT_LOG if target.run_dir is not None else None


def monitor_environment(target, settings) -> tuple[dict[str, str], list[str]]:
    """The middleware's environment for monitoring ``target`` and what ``tessera serve`` tells the user about it."""
    from tessera.monitor import MonitorError
    from tessera.monitor.drift import Thresholds
    from tessera.monitor.reference import DriftReference

    if target.kind != "classify" or not settings.monitor:
        return {}, []
    thresholds = Thresholds.from_settings(settings)
    try:
        DriftReference.load(target.model_dir)
    except MonitorError as error:
        config = {"model_dir": str(target.model_dir), "reference": False}
        return {ENVIRONMENT: json.dumps(config)}, [f"drift is not watched: {error}"]
    log = traffic_log_path(target, settings)
    config = {
        "model_dir": str(target.model_dir),
        "reference": True,
        "log": str(log) if log else None,
        "thresholds": thresholds.__dict__,
    }
    where = f"served traffic logged to {log}" if log else "served traffic not logged (set traffic_log=FILE)"
    note = (
        f"drift watched against the export's reference over the last {thresholds.window} inputs "
        f"(PSI > {thresholds.psi}, KS p < {thresholds.ks_pvalue}); {where}"
    )
    return {ENVIRONMENT: json.dumps(config)}, [note]


class ClassifierMonitor:
    """What the middleware does with a ``/classify`` answer: count labels and confidences; with a reference, log
    the inputs' features and judge drift over the sliding window."""

    def __init__(self, config: dict, echo):
        self.echo, self.window, self.tokenizer, self.log = echo, None, None, None
        self.lock = threading.Lock()  # requests are observed in worker threads; the tokenizer is not thread-safe
        if config.get("reference"):
            from transformers import AutoTokenizer

            from tessera.monitor.drift import Thresholds
            from tessera.monitor.reference import DriftReference
            from tessera.monitor.watch import DriftWindow

            reference = DriftReference.load(Path(config["model_dir"]))
            self.window = DriftWindow(reference, Thresholds(**config["thresholds"]))
            self.tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
            self.log = Path(config["log"]) if config.get("log") else None

    @classmethod
    def from_environment(cls, echo) -> ClassifierMonitor | None:
        """The monitor the launcher asked for, or None."""
        config = os.environ.get(ENVIRONMENT)
        return cls(json.loads(config), echo) if config else None

    def observe(self, request: dict | None, body: bytes) -> None:
        """Record one successful ``/classify`` exchange (``request``: its parsed body; ``body``: the answer's)."""
        with self.lock:
            self._observe(request, body)

    def _observe(self, request: dict | None, body: bytes) -> None:
        answered = json.loads(body).get("data") or []
        predictions = [(item["label"], max(item["probs"])) for item in answered]
        for label, confidence in predictions:
            metrics()["labels"].labels(str(label)).inc()
            metrics()["confidence"].observe(confidence)
        texts = (request or {}).get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if self.window is None or not isinstance(texts, list) or len(texts) != len(predictions):
            return
        if not all(isinstance(text, str) for text in texts):
            return  # token-id inputs: no words to measure
        self._judge(self._records(texts, predictions))

    def _records(self, texts: list[str], predictions: list[tuple[str, float]]) -> list[dict]:
        from tessera.monitor.features import input_features

        now = round(time.time(), 3)
        features = input_features(texts, self.tokenizer, self.window.reference.vocabulary)
        return [
            {
                "time": now,
                "tokens": found["tokens"],
                "oov_share": None if found["oov_share"] is None else round(found["oov_share"], 6),
                "label": label,
                "confidence": round(confidence, 6),
            }
            for found, (label, confidence) in zip(features, predictions)
        ]

    def _judge(self, records: list[dict]) -> None:
        from tessera.monitor.traffic import append_records
        from tessera.monitor.watch import describe

        if self.log is not None:
            try:
                append_records(self.log, records)
            except OSError as error:
                self.echo(
                    f"served-traffic log {self.log} cannot be written ({error.strerror}): logging stops, drift is "
                    "still watched; restart with traffic_log=FILE somewhere writable"
                )
                self.log = None
        found = metrics()
        for feature in self.window.add(records):
            found["adwin"].labels(feature).inc()
        change = self.window.judge()
        found["window"].set(self.window.size)
        for item in self.window.last:
            found["psi"].labels(item.feature).set(item.psi)
            found["drifted"].labels(item.feature).set(int(item.drifted))
            if item.p_value is not None:
                found["ks_statistic"].labels(item.feature).set(item.ks_statistic)
                found["ks_pvalue"].labels(item.feature).set(item.p_value)
        found["drift"].set(int(self.window.drifting))
        stamp = time.strftime("%H:%M:%S")
        if change == "started":
            self.echo(f"{stamp} drift detected over the last {self.window.size} inputs: {describe(self.window.last)}")
        elif change == "stopped":
            self.echo(f"{stamp} drift ended: the last {self.window.size} inputs are within the thresholds")
