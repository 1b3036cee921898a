"""Monitoring what a classifier serves: the features of its inputs and outputs compared with the training data's.

- :mod:`tessera.monitor.features` measures texts: length in tokens and out-of-vocabulary share.
- :mod:`tessera.monitor.reference` writes and reads the export's ``drift_reference.json``.
- :mod:`tessera.monitor.drift` compares a sample of served features with the reference (KS test, PSI) and finds
  change points online (river's ADWIN).
- :mod:`tessera.monitor.traffic` appends served features to a JSON Lines log and reads it back, checked.
- :mod:`tessera.monitor.watch` is the server's sliding window: drift gauges on ``/metrics``, a log line when drift
  starts or stops.
- :mod:`tessera.monitor.report` and :mod:`tessera.monitor.cli`: ``tessera monitor RUN_DIR``, a report with plots.
"""

from tessera.core.errors import TesseraError


class MonitorError(TesseraError):
    """A served-traffic log or a drift reference that cannot be read, or a run that has none."""
