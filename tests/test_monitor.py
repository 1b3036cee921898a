"""Monitoring what a classifier serves, without a model server: the drift tests on synthetic samples, the
served-traffic log and its bad lines, the middleware reading /classify answers on a real ASGI app, and
``tessera monitor`` on the smoke run's export."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest

from conftest import tessera
from tessera.monitor import MonitorError
from tessera.monitor.drift import ChangeDetectors, Thresholds, compare, psi_numeric
from tessera.monitor.features import oov_share, vocabulary, words
from tessera.monitor.reference import REFERENCE_FILE, DriftReference
from tessera.monitor.traffic import append_records, read_records

LABELS = ["negative", "positive"]


def synthetic(rng: random.Random, count: int, shift: float = 0.0) -> list[dict]:
    """Served-looking records: token lengths around 22 (+ 20 * shift), OOV shares around 0.05 (+ 0.3 * shift),
    confidences around 0.8 (- 0.2 * shift), labels half and half."""
    return [
        {
            "time": float(i),
            "tokens": max(1, round(rng.gauss(22 + 20 * shift, 8))),
            "oov_share": min(1.0, max(0.0, rng.gauss(0.05 + 0.3 * shift, 0.04))),
            "confidence": min(1.0, max(0.5, rng.gauss(0.8 - 0.2 * shift, 0.1))),
            "label": rng.choice(LABELS),
        }
        for i in range(count)
    ]


def reference_of(records: list[dict]) -> DriftReference:
    samples = {name: [r[name] for r in records] for name in ("tokens", "oov_share", "confidence")}
    counts = {label: sum(r["label"] == label for r in records) for label in LABELS}
    return DriftReference(LABELS, samples, counts, {"good", "film"}, "validation")


def columns(records):
    return {name: [r[name] for r in records] for name in ("tokens", "oov_share", "confidence", "label")}


@pytest.fixture(scope="module")
def reference():
    return reference_of(synthetic(random.Random(0), 400))


def test_the_same_distribution_is_no_drift_and_a_shifted_one_is(reference):
    thresholds = Thresholds()
    same = compare(reference, columns(synthetic(random.Random(1), 200)), thresholds)
    assert [item.feature for item in same] == ["tokens", "oov_share", "confidence", "label"]
    assert not any(item.drifted for item in same), same
    assert all(item.p_value > 0.01 for item in same[:3]) and all(item.psi < 0.2 for item in same)
    shifted = compare(reference, columns(synthetic(random.Random(1), 200, shift=1.0)), thresholds)
    assert all(item.drifted for item in shifted[:3]) and not shifted[3].drifted
    assert all(item.p_value < 1e-6 and item.psi > 0.2 for item in shifted[:3])


def test_label_shares_drift_by_psi_alone(reference):
    records = synthetic(random.Random(2), 200)
    for record in records[:180]:
        record["label"] = "positive"
    (label,) = [item for item in compare(reference, columns(records), Thresholds()) if item.feature == "label"]
    assert label.drifted and label.psi > 0.2 and label.p_value is None


def test_psi_is_zero_for_the_reference_itself_and_grows_with_the_shift():
    rng = random.Random(3)
    sample = [rng.gauss(0, 1) for _ in range(500)]
    psi = [psi_numeric(sample, [value + shift for value in sample]) for shift in (0.0, 0.25, 0.5, 1.0)]
    assert psi[0] == pytest.approx(0.0, abs=1e-12) and psi == sorted(psi)


def test_adwin_primed_with_the_reference_finds_a_change_only_in_shifted_traffic(reference):
    same = ChangeDetectors(reference, 0.002)
    assert not any(same.update(record) for record in synthetic(random.Random(4), 300))
    shifted = ChangeDetectors(reference, 0.002)
    changed = [shifted.update(record) for record in synthetic(random.Random(4), 300, shift=1.0)]
    first = next(index for index, names in enumerate(changed) if names)
    assert first < 100 and {"oov_share", "tokens"} & set(changed[first])


def test_bad_thresholds_are_one_line():
    from tessera.core.errors import ConfigError
    from tessera.serving.settings import load_settings

    with pytest.raises(ConfigError, match="drift_min_window=300 must be at least 2 and at most drift_window=200"):
        Thresholds.from_settings(load_settings(None, ["drift_min_window=300"]))
    with pytest.raises(ConfigError, match="drift_ks_pvalue=1.5 must be between 0 and 1"):
        Thresholds.from_settings(load_settings(None, ["drift_ks_pvalue=1.5"]))


def test_words_and_oov_shares():
    assert words("Don't watch it: 2 STARS!") == ["don", "t", "watch", "it", "stars"]
    known = vocabulary(["a good film", "a dull film"])
    assert oov_share("A good, GOOD film", known) == 0.0
    assert oov_share("a boring film about bankers", known) == pytest.approx(3 / 5)
    assert oov_share("1999 ...", known) is None


def test_the_traffic_log_appends_lines_and_names_a_malformed_one(tmp_path):
    log = tmp_path / "monitor" / "served.jsonl"
    records = synthetic(random.Random(5), 3)
    append_records(log, records[:2])
    append_records(log, records[2:])
    assert read_records(log) == json.loads(json.dumps(records))
    with log.open("a") as handle:
        handle.write('{"time": 1.0, "tokens": 12, "oov_share": 0.1, "label": "positive"')
    with pytest.raises(MonitorError, match=r"served.jsonl line 4 is not a served-traffic record \(not valid JSON"):
        read_records(log)
    log.write_text(json.dumps({**records[0], "confidence": 2.5}) + "\n")
    with pytest.raises(MonitorError, match="line 1 .*confidence outside"):
        read_records(log)
    with pytest.raises(MonitorError, match="no served-traffic log at .*pass --log FILE"):
        read_records(tmp_path / "missing.jsonl")


def test_an_export_without_a_reference_says_how_to_make_one(tmp_path):
    with pytest.raises(MonitorError, match=f"has no drift reference \\({REFERENCE_FILE}\\): retrain the run"):
        DriftReference.load(tmp_path)
    (tmp_path / REFERENCE_FILE).write_text("{not json")
    with pytest.raises(MonitorError, match="is not a readable drift reference"):
        DriftReference.load(tmp_path)


async def classify_app(scope, receive, send):
    """A stand-in for vLLM's /classify: every input is ``positive`` with probability 0.99; /fail raises, /missing
    answers 404."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    if scope["path"] == "/fail":
        raise RuntimeError("boom")
    status, answer = 404, b'{"error": "no such route"}'
    if scope["path"] == "/classify":
        inputs = json.loads(body)["input"]
        data = [{"index": i, "label": "positive", "probs": [0.01, 0.99]} for i in range(len(inputs))]
        status, answer = 200, json.dumps({"data": data}).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": answer[:10], "more_body": True})
    await send({"type": "http.response.body", "body": answer[10:]})


def test_the_middleware_counts_errors_labels_and_confidences_and_flags_drift(smoke_run, tmp_path, monkeypatch, capsys):
    from prometheus_client import REGISTRY
    from test_serve import call

    from tessera.core.config import ServeConfig
    from tessera.serving.middleware import TesseraMiddleware
    from tessera.serving.monitoring import monitor_environment
    from tessera.serving.target import ServeTarget

    export, log = smoke_run / "export", tmp_path / "served.jsonl"
    settings = ServeConfig(traffic_log=str(log), drift_window=100, drift_min_window=50)
    environment, notes = monitor_environment(ServeTarget(export, "classify", "tiny"), settings)
    assert notes == [
        f"drift watched against the export's reference over the last 100 inputs (PSI > 0.2, KS p < 0.01); "
        f"served traffic logged to {log}"
    ]
    for name in ("TESSERA_SERVE_API_KEY", "TESSERA_SERVE_RUN_DIR", "TESSERA_SERVE_TRUNCATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TESSERA_SERVE_MONITOR", environment["TESSERA_SERVE_MONITOR"])
    layer = TesseraMiddleware(classify_app)
    sample = lambda name, labels=None: REGISTRY.get_sample_value(name, labels or {}) or 0  # noqa: E731
    before = (
        sample("tessera_predicted_labels_total", {"label": "positive"}),
        sample("tessera_prediction_confidence_count"),
    )
    errors = sample("tessera_request_errors_total", {"route": "other", "status": "exception"})
    texts = [json.loads(line)["text"] for line in (smoke_run / "predictions.jsonl").read_text().splitlines()]
    for start in range(0, 60, 3):
        answer = call(layer, "POST", "/classify", json.dumps({"input": texts[start : start + 3]}).encode())
        assert answer.status_code == 200 and len(answer.json()["data"]) == 3
    assert sample("tessera_predicted_labels_total", {"label": "positive"}) == before[0] + 60
    assert sample("tessera_prediction_confidence_count") == before[1] + 60
    records = read_records(log)
    assert len(records) == 60 and {r["label"] for r in records} == {"positive"} and records[0]["confidence"] == 0.99
    assert records[0]["tokens"] == len(layer.monitor.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert records[0]["oov_share"] == round(oov_share(texts[0], layer.monitor.window.reference.vocabulary), 6)
    # the smoke model is untrained (confidence about 0.5): answers at 0.99 are a drift of the confidence
    assert sample("tessera_drift_detected") == 1 and sample("tessera_drift_window_inputs") == 60
    assert sample("tessera_drift_feature_drifted", {"feature": "confidence"}) == 1
    assert sample("tessera_drift_ks_pvalue", {"feature": "confidence"}) < 0.01
    output = capsys.readouterr().out
    assert output.count("drift detected over the last") == 1 and "confidence PSI" in output
    assert call(layer, "POST", "/missing", b"{}").status_code == 404
    assert sample("tessera_request_errors_total", {"route": "other", "status": "404"}) >= 1
    with pytest.raises(RuntimeError, match="boom"):
        call(layer, "POST", "/fail", b"{}")
    assert sample("tessera_request_errors_total", {"route": "other", "status": "exception"}) == errors + 1


def test_an_export_without_a_reference_is_served_without_drift_watch(smoke_run, tmp_path):
    from tessera.core.config import ServeConfig
    from tessera.serving.monitoring import monitor_environment
    from tessera.serving.target import ServeTarget

    export = tmp_path / "export"
    shutil.copytree(smoke_run / "export", export)
    (export / REFERENCE_FILE).unlink()
    environment, notes = monitor_environment(ServeTarget(export, "classify", "tiny"), ServeConfig())
    assert json.loads(environment["TESSERA_SERVE_MONITOR"]) == {"model_dir": str(export), "reference": False}
    assert notes == [
        f"drift is not watched: {export} has no drift reference ({REFERENCE_FILE}): retrain the run "
        f"with this version of tessera (a classifier run with a validation split writes "
        f"export/{REFERENCE_FILE})"
    ]
    assert monitor_environment(ServeTarget(export, "classify", "tiny"), ServeConfig(monitor=False)) == ({}, [])


def served_like(reference: DriftReference, count: int, seed: int, shift: bool = False) -> list[dict]:
    """Records drawn from the reference's own values (``shift``: longer inputs with many unknown words)."""
    rng = random.Random(seed)
    pick = lambda name: rng.choice([v for v in reference.samples[name] if v is not None])  # noqa: E731
    records = []
    for i in range(count):
        tokens, share = pick("tokens"), pick("oov_share")
        if shift:
            tokens, share = tokens + 25, min(1.0, share + 0.4)
        records.append(
            {
                "time": 1e9 + i,
                "tokens": tokens,
                "oov_share": share,
                "label": "positive",
                "confidence": pick("confidence"),
            }
        )
    return records


def test_tessera_monitor_reports_no_drift_in_domain_and_drift_when_shifted(smoke_run, tmp_path):
    reference = DriftReference.load(smoke_run / "export")
    log = tmp_path / "in_domain.jsonl"
    append_records(log, served_like(reference, 150, seed=1))
    result = tessera("monitor", str(smoke_run), "--log", str(log), "--out", str(tmp_path / "same"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drift: no" in result.stdout and "| tokens | 150 |" in result.stdout
    shifted = tmp_path / "shifted.jsonl"
    append_records(shifted, served_like(reference, 200, seed=1) + served_like(reference, 200, seed=2, shift=True))
    result = tessera("monitor", str(smoke_run), "--log", str(shifted), "--out", str(tmp_path / "report"))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert rows["tokens"].endswith("| yes |") and rows["oov_share"].endswith("| yes |")
    assert rows["label"].endswith("| no |") and "drift: yes" in result.stdout
    assert "windows of 200 inputs, 100 apart: 2 of 3 drifted (first: inputs 101-300)" in result.stdout
    changes = re.search(r"ADWIN change points \(delta 0.002\): (.+)", result.stdout).group(1)
    assert {feature for feature, _ in re.findall(r"(\w+) at input (\d+)", changes)} >= {"tokens", "oov_share"}
    assert all(int(number) > 200 for _, number in re.findall(r"(\w+) at input (\d+)", changes))
    written = {path.name for path in (tmp_path / "report").iterdir()}
    assert written == {"monitor_histograms.png", "monitor_drift.png", "monitor_report.md"}
    report = (tmp_path / "report" / "monitor_report.md").read_text()
    assert "| 1-200 | none |" in report and "| 201-400 | tokens, oov_share |" in report


def test_tessera_monitor_bad_input_is_one_line(smoke_run, tmp_path):
    log = tmp_path / "served.jsonl"
    append_records(log, served_like(DriftReference.load(smoke_run / "export"), 3, seed=1))
    with log.open("a") as handle:
        handle.write("not json\n")
    result = tessera("monitor", str(smoke_run), "--log", str(log))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{log} line 4 is not a served-traffic record (not valid JSON" in result.stderr
    export = tmp_path / "export"
    shutil.copytree(smoke_run / "export", export)
    (export / REFERENCE_FILE).unlink()
    result = tessera("monitor", str(export), "--log", str(log))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "has no drift reference (drift_reference.json): retrain the run" in result.stderr
    result = tessera("monitor", str(smoke_run))
    assert (
        result.returncode == 2 and f"no served-traffic log at {smoke_run / 'monitor' / 'served.jsonl'}" in result.stderr
    )


def test_an_unwritable_traffic_log_is_one_line_and_drift_is_still_watched(smoke_run, tmp_path):
    from tessera.core.config import ServeConfig
    from tessera.serving.monitoring import ClassifierMonitor, monitor_environment
    from tessera.serving.target import ServeTarget

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = ServeConfig(traffic_log=str(blocker / "served.jsonl"), drift_window=20, drift_min_window=10)
    environment, _ = monitor_environment(ServeTarget(smoke_run / "export", "classify", "tiny"), settings)
    lines = []
    monitor = ClassifierMonitor(json.loads(environment["TESSERA_SERVE_MONITOR"]), lines.append)
    answer = json.dumps({"data": [{"index": 0, "label": "positive", "probs": [0.4, 0.6]}]}).encode()
    for _ in range(3):
        monitor.observe({"input": "a fine film"}, answer)
    assert len(lines) == 1 and lines[0].startswith(f"served-traffic log {blocker / 'served.jsonl'} cannot be written")
    assert monitor.window.size == 3
