"""Built-in adapters, one module per technique (``adapter=none`` is full fine-tuning).

Through PEFT (:mod:`.peft_base`): ``lora``, ``dora``, ``multi_lora``, ``adalora``, ``ia3``, ``loha``, ``lokr``,
``prefix``. Without PEFT: ``freeze``, ``linear_probe``, ``gradual_unfreeze`` (:mod:`.freezing_base`) and ``llrd``.
They stack in config order (``adapter=[lora,freeze]``); docs/adapters.md has the rules and commands.
"""

from tessera import hookimpl
from tessera.plugins.adapters.adalora import AdaLora
from tessera.plugins.adapters.freeze import Freeze
from tessera.plugins.adapters.gradual_unfreeze import GradualUnfreeze
from tessera.plugins.adapters.ia3 import IA3
from tessera.plugins.adapters.linear_probe import LinearProbe
from tessera.plugins.adapters.llrd import LayerwiseDecay
from tessera.plugins.adapters.lora import Dora, Lora
from tessera.plugins.adapters.lycoris import LoHa, LoKr
from tessera.plugins.adapters.multi_lora import MultiLora
from tessera.plugins.adapters.prefix import Prefix

ADAPTERS = [
    Lora,
    Dora,
    MultiLora,
    AdaLora,
    IA3,
    LoHa,
    LoKr,
    Prefix,
    Freeze,
    LinearProbe,
    GradualUnfreeze,
    LayerwiseDecay,
]


@hookimpl
def tessera_adapters():
    return ADAPTERS
