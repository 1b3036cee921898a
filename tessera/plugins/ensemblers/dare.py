"""``dare``: DARE (Yu et al., 2024, "Language models are super Mario"): each value of every task vector dropped with
probability ``1 - density`` and the kept ones rescaled by ``1 / density``, then combined by task arithmetic
(``combination=linear``) or TIES' sign election and disjoint mean (``combination=ties``), by
``peft.utils.merge_utils.dare_linear`` / ``dare_ties``. The drops are drawn from ``trainer.seed``: the same seed
gives the same model."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.core.techniques import EnsembleConfig, WeightMerger
from tessera.plugins.ensemblers.task_vectors import check_density, check_majority_sign, merge_task_vectors

#: How the rescaled task vectors are combined.
COMBINATIONS = ("linear", "ties")


@dataclass
class DareConfig(EnsembleConfig):
    """The fraction of each task vector kept, how the rescaled vectors combine, and their factor."""

    #: The probability of keeping each value of a task vector (1 - the paper's drop rate p).
    density: float = 0.5
    #: ``linear``: the weighted sum of the rescaled task vectors (DARE + task arithmetic, mergekit's dare_linear);
    #: ``ties``: sign election and disjoint mean (mergekit's dare_ties).
    combination: str = "linear"
    #: With ``combination=ties``: ``total`` (sign of the sum) or ``frequency`` (most frequent sign).
    majority_sign: str = "total"
    #: The factor of the combined task vector added to the base.
    scaling: float = 1.0


class Dare(WeightMerger):
    """Drop and rescale the task vectors, then combine them linearly or by TIES; seeded by ``trainer.seed``."""

    name = "dare"
    Config = DareConfig

    def validate(self, composition):
        check_density(self.label, self.config.density)
        if self.config.combination not in COMBINATIONS:
            raise ConfigError(f"{self.label}: combination={self.config.combination} is not one of linear, ties")
        check_majority_sign(self.label, self.config.majority_sign)
        super().validate(composition)

    def merge(self, members, base, context):
        return dare_merge(members, base, context.weights, self.config, context.run.cfg.trainer.seed)


def dare_merge(members: list[dict], base: dict, weights: list[float], config: DareConfig, seed: int) -> dict:
    """The DARE merge of ``members`` with the random drops drawn from ``seed`` (the global random state is left as
    it was)."""
    import torch
    from peft.utils.merge_utils import dare_linear, dare_ties

    def combine(vectors, relative):
        if config.combination == "ties":
            return dare_ties(vectors, relative, config.density, config.majority_sign)
        return dare_linear(vectors, relative, config.density)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return merge_task_vectors(members, base, weights, combine, config.scaling)
