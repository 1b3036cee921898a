"""tessera: compose large-model techniques as plugins into one pipeline."""

import os

import pluggy

# torchao (imported by PEFT and transformers when installed) tries to load its CUDA kernels on import and prints a
# failure for each on a CPU machine; tessera uses its CPU paths only where a GPU is absent.
os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")

__version__ = "0.1.0"

#: Marker for plugin hook implementations: decorate functions named like the hookspecs in
#: :mod:`tessera.core.hookspecs` with it.
hookimpl = pluggy.HookimplMarker("tessera")

__all__ = ["__version__", "hookimpl"]
