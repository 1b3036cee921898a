"""``ties``: TIES-merging (Yadav et al., 2023, "Resolving interference when merging models"): each task vector
trimmed to its ``density`` largest magnitudes, a sign elected per parameter, and the mean of the values that agree
with it (disjoint merge), by ``peft.utils.merge_utils.ties``."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.techniques import EnsembleConfig, WeightMerger
from tessera.plugins.ensemblers.task_vectors import check_density, check_majority_sign, merge_task_vectors


@dataclass
class TiesConfig(EnsembleConfig):
    """The fraction of each task vector kept, the sign election, and the factor of the merged task vector."""

    #: The fraction of each task vector's values kept, by magnitude (the paper's k = 20%).
    density: float = 0.2
    #: ``total``: the sign of the sum of the trimmed values (the paper's); ``frequency``: the most frequent sign.
    majority_sign: str = "total"
    #: The factor of the merged task vector added to the base (the paper's lambda).
    scaling: float = 1.0


class Ties(WeightMerger):
    """Trim, elect sign, disjoint merge of the task vectors; a tensor the base lacks is the weighted average."""

    name = "ties"
    Config = TiesConfig

    def validate(self, composition):
        check_density(self.label, self.config.density)
        check_majority_sign(self.label, self.config.majority_sign)
        super().validate(composition)

    def merge(self, members, base, context):
        from peft.utils.merge_utils import ties

        def combine(vectors, weights):
            return ties(vectors, weights, self.config.density, self.config.majority_sign)

        return merge_task_vectors(members, base, context.weights, combine, self.config.scaling)
