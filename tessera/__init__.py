"""tessera: compose large-model techniques as plugins into one pipeline."""

import logging
import os

import pluggy

# torchao, which transformers imports whenever it is installed, loads CUDA kernels on import; on a machine without
# an NVIDIA GPU they cannot load and it warns for each: skip them there, quietly. Its enums also make torch 2.13's
# pytree warn once each: noise in every run that is not the user's to fix.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"

#: Marker for plugin hook implementations: decorate functions named like the hookspecs in
#: :mod:`tessera.core.hookspecs` with it.
hookimpl = pluggy.HookimplMarker("tessera")

__all__ = ["__version__", "hookimpl"]
