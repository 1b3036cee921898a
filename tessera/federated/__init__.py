"""Federated training on Flower (flwr 1.32.1's Message API): a federated stage (:mod:`.stage`), its clients
(:mod:`.client`), its rounds on the server (:mod:`.rounds`), tessera's in-process grid (:mod:`.grid`) and the
partitions of the training split (:mod:`.partition`). docs/federated.md is the user's guide.

Importing the package turns Flower's telemetry off unless ``FLWR_TELEMETRY_ENABLED`` is set (tessera runs offline)
and keeps Flower's per-round INFO lines and its "federated evaluation will be skipped" warning (tessera evaluates
on the server) out of the run's log.
"""

import logging
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


class _QuietFlower(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "evaluation will be skipped" not in record.getMessage()


logging.getLogger("flwr").addFilter(_QuietFlower())
