"""``task_arithmetic``: the base plus the weighted sum of the members' task vectors (Ilharco et al., 2023, "Editing
models with task arithmetic"), by ``peft.utils.merge_utils.task_arithmetic``."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.techniques import EnsembleConfig, WeightMerger
from tessera.plugins.ensemblers.task_vectors import merge_task_vectors


@dataclass
class TaskArithmeticConfig(EnsembleConfig):
    """The factor of the summed task vectors (the paper's lambda; mergekit's default 1)."""

    #: 1: base + the sum of the task vectors; 1 / (number of members): their mean, the linear soup.
    scaling: float = 1.0


class TaskArithmetic(WeightMerger):
    """``base + scaling * sum(weight_i * (member_i - base))`` with the members' relative weights (1 each by
    default); a tensor the base lacks (a new head) is the members' weighted average."""

    name = "task_arithmetic"
    Config = TaskArithmeticConfig

    def merge(self, members, base, context):
        from peft.utils.merge_utils import task_arithmetic

        return merge_task_vectors(members, base, context.weights, task_arithmetic, self.config.scaling)
