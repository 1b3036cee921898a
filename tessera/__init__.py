"""tessera: compose large-model techniques as plugins into one pipeline."""

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: decorate functions named like the hookspecs in
#: :mod:`tessera.core.hookspecs` with it.
hookimpl = pluggy.HookimplMarker("tessera")

__all__ = ["__version__", "hookimpl"]
