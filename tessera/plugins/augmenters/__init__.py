"""Built-in augmenters (family ``augment``): ``eda``, ``kg_substitute``, ``backtranslate``, ``char_noise``.

Each keeps the original examples and adds deterministic variants (see :mod:`.base` for what they share); several
chain in config order: ``augment=[eda,backtranslate]`` back-translates the EDA output too.
"""

from tessera import hookimpl
from tessera.plugins.augmenters.backtranslate import Backtranslate
from tessera.plugins.augmenters.char_noise import CharNoise
from tessera.plugins.augmenters.eda import Eda
from tessera.plugins.augmenters.kg_substitute import KgSubstitute


@hookimpl
def tessera_augmenters():
    return [Eda, KgSubstitute, Backtranslate, CharNoise]
