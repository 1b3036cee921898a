"""The errors of the knowledge-graph store and its loaders."""

from tessera.core.errors import TesseraError


class GraphError(TesseraError):
    """A knowledge-graph source is malformed, unknown or too large."""


class GraphTooLargeError(GraphError):
    """A graph would not fit in the memory available; raised before anything is allocated."""
