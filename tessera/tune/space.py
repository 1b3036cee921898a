"""The search space of a study: ``tune.space`` parsed into typed parameters, checked against the config, sampled
by an Optuna trial and written as Hydra overrides.

``tune.space`` maps dotted config keys to a parameter: a list is a categorical choice, a mapping has a ``type``
(``float``, ``int``, ``loguniform`` or ``categorical``) with ``low`` / ``high`` (and an optional ``step``; ``log: true``
for a log-scaled ``float`` or ``int``) or ``choices``. Nested mappings are the same keys written as a tree
(``{trainer: {learning_rate: {...}}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.core.ensemble_cli import literal
from tessera.core.errors import ConfigError

TYPES = ("float", "int", "loguniform", "categorical")
_SPEC_KEYS = {"type", "low", "high", "step", "log", "choices"}


@dataclass(frozen=True)
class Parameter:
    """One dimension of the search space: the config key it sets and how its values are drawn."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def describe(self) -> dict:
        """The parameter as plain data (stored in the study, to compare a later run's space with)."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "step": self.step, "log": self.log}

    def suggest(self, trial) -> Any:
        """The value the Optuna ``trial`` draws for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value of the parameter (the grid sampler's axis); a ``ConfigError`` for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type != "int":
            raise ConfigError(
                f"tune.sampler=grid needs a finite space: give tune.space.{self.key} a step or a list of choices"
            )
        step, values, value = self.step or 1, [], self.low
        while value <= self.high + 1e-12:
            values.append(int(value) if self.type == "int" else value)
            value += step
        return values

    def samples(self) -> list:
        """Values that span the parameter's range (its choices, or its low and high), for checking the config."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


def _leaves(node, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: parameter spec}`` of a (possibly nested) ``tune.space`` mapping."""
    found = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and not set(value) <= _SPEC_KEYS and "type" not in value:
            found.update(_leaves(value, dotted))
        else:
            found[dotted] = value
    return found


def _number(key: str, spec: dict, name: str):
    value = spec.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"tune.space.{key}.{name}={value!r} must be a number")
    return value


def _parameter(key: str, spec) -> Parameter:
    if isinstance(spec, (list, tuple)):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"tune.space.{key}={spec!r} is neither a list of choices nor a mapping with a type "
            f"({', '.join(TYPES)}): e.g. {{type: loguniform, low: 1e-5, high: 1e-3}}"
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"tune.space.{key} has an unknown field '{unknown[0]}': use {', '.join(sorted(_SPEC_KEYS))}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in TYPES:
        raise ConfigError(f"tune.space.{key} has type {kind!r}: choose one of {', '.join(TYPES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"tune.space.{key} has no choices: give a non-empty list (e.g. [4, 8, 16])")
        if len(set(map(repr, choices))) < len(choices):
            raise ConfigError(f"tune.space.{key} lists a choice twice: {list(choices)}")
        return Parameter(key, kind, choices=tuple(choices))
    low, high = _number(key, spec, "low"), _number(key, spec, "high")
    if low >= high:
        raise ConfigError(f"tune.space.{key} is an empty range (low={low} >= high={high}): give low < high")
    step = spec.get("step")
    if step is not None and (_number(key, spec, "step") <= 0 or step > high - low):
        raise ConfigError(f"tune.space.{key}.step={step} must be positive and at most high - low ({high - low})")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"tune.space.{key} is log-scaled: low={low} must be positive")
    if log and step is not None:
        raise ConfigError(f"tune.space.{key}: a log-scaled range takes no step")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"tune.space.{key} has type int: low, high and step must be whole numbers")
    if kind == "int":
        return Parameter(key, "int", int(low), int(high), None if step is None else int(step), log)
    return Parameter(key, "float", float(low), float(high), step, log)


def parse_space(space) -> dict[str, Parameter]:
    """The parameters of ``tune.space`` (a mapping, as composed), by config key; a ``ConfigError`` for a malformed
    one (empty, an unknown type, an empty range, no choices)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)
    if not space:
        raise ConfigError(
            "tune.space is empty: name the config keys to tune, e.g. "
            "'tune.space={trainer.learning_rate:{type:loguniform,low:1e-5,high:1e-3},adapter.lora.r:[4,8,16]}'"
        )
    parameters = {key: _parameter(key, spec) for key, spec in _leaves(space).items()}
    tuned_tune = [key for key in parameters if key == "tune" or key.startswith(("tune.", "hydra."))]
    if tuned_tune:
        raise ConfigError(f"tune.space.{tuned_tune[0]}: tune.* and hydra.* keys cannot be tuned")
    return parameters


def overrides(values: dict[str, Any]) -> list[str]:
    """``["key=value", ...]`` for a trial's parameter values."""
    return [f"{key}={literal(value)}" for key, value in values.items()]


def check_keys(parameters: dict[str, Parameter], base_cfg) -> None:
    """Refuse a parameter whose key is not in the composed config ``base_cfg`` (one line, with the keys beside)."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    missing = object()
    for key in parameters:
        if OmegaConf.select(base_cfg, key, default=missing, throw_on_missing=False) is not missing:
            continue
        parent_path, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(base_cfg, parent_path, default=None) if parent_path else base_cfg
        valid = sorted(parent.keys()) if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" (did you mean {parent_path + '.' if parent_path else ''}{close[0]}?)" if close else ""
        where = f"valid keys of {parent_path} are {', '.join(valid)}" if valid else f"{parent_path or key} is not set"
        raise ConfigError(f"tune.space names an unknown config key '{key}'{hint}: {where}")
