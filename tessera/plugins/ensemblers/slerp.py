"""``slerp``: spherical linear interpolation of two members' parameters, tensor by tensor (as mergekit's ``slerp``):
the path along the arc between the two flattened tensors, a straight line where they are nearly parallel."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.core.techniques import EnsembleConfig, WeightMerger

#: Above this absolute cosine the two tensors are treated as parallel and interpolated linearly (mergekit's value).
PARALLEL_COSINE = 0.9995


@dataclass
class SlerpConfig(EnsembleConfig):
    """Where on the arc between the two members the merged model lies."""

    #: 0: the first member; 1: the second; 0.5: halfway along the arc.
    t: float = 0.5


class Slerp(WeightMerger):
    """Interpolates each tensor of exactly two members along the arc between them, at ``t``."""

    name = "slerp"
    Config = SlerpConfig

    def validate(self, composition):
        if not 0.0 <= self.config.t <= 1.0:
            raise ConfigError(f"{self.label}: t={self.config.t} is outside [0, 1]: 0 is the first member, 1 the second")
        if self.config.weights is not None:
            raise ConfigError(f"{self.label} takes no weights: t places the merge between the two members")
        from tessera.core.ensembling import members_of

        count = len(members_of(self, composition))
        if count != 2:
            raise ConfigError(
                f"{self.label} interpolates exactly two members and has {count}: list two (members=[a,b])"
            )
        super().validate(composition)

    def merge(self, members, base, context):
        first, second = members
        return {key: slerp(self.config.t, first[key], second[key]) for key in first}


def slerp(t: float, first, second, eps: float = 1e-8):
    """The tensor at ``t`` along the arc from ``first`` to ``second``: ``sin((1-t)θ)/sin θ · first + sin(tθ)/sin θ ·
    second``, θ the angle between them (a zero tensor is at a right angle to any other); linear interpolation where
    they are nearly parallel."""
    import torch

    a, b = first.double().flatten(), second.double().flatten()
    cosine = torch.dot(unit(a, eps), unit(b, eps))
    if cosine.abs() > PARALLEL_COSINE:
        return (1 - t) * first + t * second
    theta = torch.arccos(cosine)
    mixed = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return mixed.reshape(first.shape).to(first.dtype)


def unit(vector, eps: float):
    """``vector`` divided by its norm; a vector of norm at most ``eps`` as it is."""
    norm = vector.norm()
    return vector / norm if norm > eps else vector
