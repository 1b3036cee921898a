"""Built-in adversaries (family ``adversary``), one module per technique: adversarial training in the word-embedding
space.

``fgm`` (:mod:`.fgm`), ``pgd`` (:mod:`.pgd`), ``freelb`` (:mod:`.freelb`) and ``vat`` (:mod:`.vat`) perturb the
output of the model's input-embedding module through a forward hook; :mod:`.base` has what they share (the hook,
the per-example L2 helpers, the configs). ``a2t`` (:mod:`.a2t`) trains on word substitutions found by a cheap
gradient-guided attack instead, with the same hook for the gradient. Any adapter composes (and any objective
for the embedding adversaries; a2t needs a classifier); docs/robustness.md has the commands and the measurements.
"""

from tessera import hookimpl
from tessera.plugins.adversaries.a2t import A2T
from tessera.plugins.adversaries.fgm import Fgm
from tessera.plugins.adversaries.freelb import FreeLB
from tessera.plugins.adversaries.pgd import Pgd
from tessera.plugins.adversaries.vat import Vat

ADVERSARIES = [Fgm, Pgd, FreeLB, Vat, A2T]


@hookimpl
def tessera_adversaries():
    return ADVERSARIES
