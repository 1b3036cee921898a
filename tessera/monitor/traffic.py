"""The served-traffic log: one JSON object a line for every input a classifier served,
``{"time": unix seconds, "tokens": int, "oov_share": float or null, "label": str, "confidence": float}`` (no text).

A request's lines are written by one ``write`` on a file opened for appending, so concurrent requests never
interleave within a line. Reading checks every line and names the first bad one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tessera.monitor import MonitorError

#: Where a run's server writes its log unless ``serve.traffic_log`` says otherwise (relative to the run directory).
DEFAULT_LOG = Path("monitor") / "served.jsonl"
_FIELDS = {"time": (int, float), "tokens": int, "oov_share": (int, float, type(None)), "label": str}


def append_records(path: Path, records: list[dict]) -> None:
    """Append ``records`` to the log at ``path`` (created with its directory), one line each, in one write."""
    if not records:
        return
    data = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)


def _problem(record) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kinds in {**_FIELDS, "confidence": (int, float)}.items():
        if name not in record:
            return f"no {name!r}"
        if isinstance(record[name], bool) or not isinstance(record[name], kinds):
            return f"{name!r} is {record[name]!r}"
    if record["tokens"] < 0 or not 0 <= record["confidence"] <= 1:
        return "tokens below 0 or confidence outside [0, 1]"
    if record["oov_share"] is not None and not 0 <= record["oov_share"] <= 1:
        return "oov_share outside [0, 1]"
    return None


def read_records(path: Path) -> list[dict]:
    """Every record of the log at ``path``; a ``MonitorError`` naming the first malformed line (blank lines are
    skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MonitorError(
            f"no served-traffic log at {path}: serve the run with tessera serve (it appends to "
            f"RUN_DIR/{DEFAULT_LOG} unless serve.traffic_log says otherwise), or pass --log FILE"
        )
    records = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problem = f"not valid JSON ({error.msg})"
            else:
                problem = _problem(record)
            if problem:
                raise MonitorError(
                    f"{path} line {number} is not a served-traffic record ({problem}): fix or delete that line"
                )
            records.append(record)
    return records
