"""Built-in ensemblers, one module per method: weight-space merges (:class:`~tessera.core.techniques.WeightMerger`)
and output-space combiners (:class:`~tessera.core.techniques.OutputCombiner`).

docs/ensembles.md has the methods, their members and what serves their exports.
"""

from tessera import hookimpl
from tessera.plugins.ensemblers.average import Average
from tessera.plugins.ensemblers.dare import Dare
from tessera.plugins.ensemblers.greedy_soup import GreedySoup
from tessera.plugins.ensemblers.linear import Linear
from tessera.plugins.ensemblers.peft_merge import PeftMerge
from tessera.plugins.ensemblers.slerp import Slerp
from tessera.plugins.ensemblers.stacking import Stacking
from tessera.plugins.ensemblers.task_arithmetic import TaskArithmetic
from tessera.plugins.ensemblers.ties import Ties
from tessera.plugins.ensemblers.vote import Vote

ENSEMBLERS = [Linear, GreedySoup, TaskArithmetic, Ties, Dare, Slerp, PeftMerge, Average, Vote, Stacking]


@hookimpl
def tessera_ensemblers():
    return ENSEMBLERS
