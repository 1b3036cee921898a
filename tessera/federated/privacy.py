"""Differential privacy of a federation (``federated.privacy``): Flower's DP strategy wrappers around the
aggregator's strategy, Flower's client-side clipping mods, and an RDP accountant (opacus) that reports epsilon.

What is protected is a *client*: user-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models"). Every round each sampled client's update ``w_k - w_global`` is clipped to L2 norm
``C``, the server averages the clipped updates with equal weights (a client mod sets every reply's
``num-examples`` to 1, so no client weighs more than ``1/n``) and adds Gaussian noise of standard deviation
``z * C / n`` to the average (Flower's wrappers: ``n`` is the clients a round samples). One round is then the
sampled Gaussian mechanism with noise multiplier ``z`` and sampling rate ``q = n / clients``; the accountant
composes the rounds with Renyi DP (opacus ``RDPAccountant``) and reports epsilon at ``federated.privacy.delta``.

- Fixed clipping (``server_fixed``, ``client_fixed``): the accounting above holds as stated. Server-side clipping
  trusts the server with each raw update; client-side clipping (``fixedclipping_mod``) clips before sending.
- Adaptive clipping (``server_adaptive``, ``client_adaptive``; Andrew et al. 2021): the norm ``C`` follows a
  target quantile of the update norms, learnt from the count of clipped updates with its own Gaussian noise
  (``clipped_count_stddev``). Flower splits the configured ``z`` into the update's noise ``z_delta`` and the count's
  ``sigma_b`` with ``z^-2 = z_delta^-2 + (2 sigma_b)^-2``, so both releases together cost one Gaussian mechanism of
  multiplier ``z``: the accountant charges ``z`` per round, which assumes that composition (and a count
  sensitivity of one clipped bit per client).
- Flower 1.32.1's adaptive wrappers update the norm the wrong way round (they count clipped updates but apply
  the rule for unclipped ones, so the norm runs away from the target quantile); tessera's subclasses
  :class:`ServerSideAdaptiveClipping` and :class:`ClientSideAdaptiveClipping` turn the update around.
- A round where only ``m < n`` sampled clients answered averages over ``m`` with the noise of ``n``: its noise
  multiplier is ``z * m / n``, and the accountant charges that.
- Flower samples exactly ``n`` clients without replacement; the RDP analysis is for Poisson sampling at rate ``q``,
  the approximation DP-FedAvg uses too.
"""

from __future__ import annotations

import logging
import math
import warnings

from flwr.serverapp import strategy as _flower

from tessera.core.errors import ConfigError

log = logging.getLogger("tessera")
MODES = ("none", "server_fixed", "server_adaptive", "client_fixed", "client_adaptive")
#: The reply metric the equal-weights mod keeps each client's real example count in.
EXAMPLES_KEY = "examples"


def settings(run):
    """The run's ``federated.privacy`` node."""
    return run.cfg.federated.privacy


def sample_rate(cfg) -> float:
    """The fraction of the clients a round samples (``q`` of the accountant)."""
    from tessera.federated.stage import per_round

    return per_round(cfg) / cfg.federated.clients


def validate(cfg) -> None:
    """Refuse privacy settings that cannot run, in one line each."""
    privacy = cfg.federated.privacy
    if privacy.dp not in MODES:
        raise ConfigError(f"federated.privacy.dp={privacy.dp} is not one of {', '.join(MODES)}")
    if not 0 < privacy.delta < 1:
        raise ConfigError(f"federated.privacy.delta={privacy.delta} must be in (0, 1)")
    if privacy.target_epsilon is not None and privacy.target_epsilon <= 0:
        raise ConfigError(f"federated.privacy.target_epsilon={privacy.target_epsilon} must be positive (or null)")
    if privacy.noise_multiplier < 0:
        raise ConfigError(f"federated.privacy.noise_multiplier={privacy.noise_multiplier} must be at least 0")
    if privacy.dp.endswith("fixed") and privacy.clipping_norm <= 0:
        raise ConfigError(f"federated.privacy.clipping_norm={privacy.clipping_norm} must be positive")
    if privacy.dp.endswith("adaptive"):
        from flwr.supercore.differential_privacy import compute_adaptive_noise_params

        from tessera.federated.stage import per_round

        try:
            compute_adaptive_noise_params(noise_multiplier(cfg), per_round(cfg), privacy.clipped_count_stddev)
        except ValueError as error:
            raise ConfigError(
                f"federated.privacy.dp={privacy.dp}: {error} (set federated.privacy.clipped_count_stddev)"
            ) from None
    if privacy.secagg and privacy.dp.startswith("server"):
        raise ConfigError(
            f"federated.privacy.dp={privacy.dp} and federated.privacy.secagg=true cannot be combined: server-side "
            "clipping needs every client's update, secure aggregation reveals only their sum; use "
            f"dp={privacy.dp.replace('server', 'client')}"
        )


def noise_multiplier(cfg) -> float:
    """The noise multiplier ``z``: ``federated.privacy.noise_multiplier``, or with ``target_epsilon`` the smallest
    one whose epsilon over ``federated.rounds`` rounds at ``delta`` is at most the target (opacus's search)."""
    privacy = cfg.federated.privacy
    if privacy.target_epsilon is None:
        return float(privacy.noise_multiplier)
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=privacy.target_epsilon,
                    target_delta=privacy.delta,
                    sample_rate=sample_rate(cfg),
                    steps=cfg.federated.rounds,
                    accountant="rdp",
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as error:
            raise ConfigError(
                f"federated.privacy.target_epsilon={privacy.target_epsilon} cannot be reached at delta "
                f"{privacy.delta} over {cfg.federated.rounds} rounds ({error}): raise it, or lower the rounds"
            ) from None


def epsilon(steps: list[tuple[float, float]], delta: float) -> float:
    """Epsilon at ``delta`` of the rounds ``steps`` ``(noise multiplier, sample rate)``, composed with the RDP
    accountant (infinite for a round without noise)."""
    from opacus.accountants import RDPAccountant

    if any(z <= 0 for z, _ in steps):
        return float("inf")
    accountant = RDPAccountant()
    for z, q in steps:
        accountant.step(noise_multiplier=z, sample_rate=q)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta)) if steps else 0.0


def finite(value: float) -> float | None:
    """``value``, or None for infinity (no noise: no guarantee), which JSON cannot write."""
    return None if math.isinf(value) else value


class Privacy:
    """The differential privacy of one federation: the wrapped strategy, the client mods and the accountant."""

    def __init__(self, cfg):
        validate(cfg)
        self.cfg, self.settings = cfg, cfg.federated.privacy
        self.mode = self.settings.dp
        self.sample_rate = sample_rate(cfg)
        self.noise_multiplier = noise_multiplier(cfg) if self.mode != "none" else 0.0
        if self.mode != "none" and self.settings.target_epsilon is not None:
            log.info(
                "federated.privacy.target_epsilon=%g: noise multiplier %.4f reaches epsilon %.3f at delta %g over "
                "%d rounds (sample rate %.3g, RDP accountant)",
                self.settings.target_epsilon,
                self.noise_multiplier,
                epsilon([(self.noise_multiplier, self.sample_rate)] * cfg.federated.rounds, self.settings.delta),
                self.settings.delta,
                cfg.federated.rounds,
                self.sample_rate,
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def wrap(self, strategy, sampled: int):
        """``strategy`` inside the Flower DP wrapper of ``federated.privacy.dp`` (``sampled``: clients per round)."""
        if not self.enabled:
            return strategy
        from flwr.serverapp import strategy as flower

        s = self.settings
        try:
            if self.mode.endswith("fixed"):
                wrapper = {
                    "server_fixed": flower.DifferentialPrivacyServerSideFixedClipping,
                    "client_fixed": flower.DifferentialPrivacyClientSideFixedClipping,
                }[self.mode]
                return wrapper(strategy, self.noise_multiplier, float(s.clipping_norm), sampled)
            wrapper = {"server_adaptive": ServerSideAdaptiveClipping, "client_adaptive": ClientSideAdaptiveClipping}[
                self.mode
            ]
            return wrapper(
                strategy,
                self.noise_multiplier,
                sampled,
                initial_clipping_norm=float(s.initial_clipping_norm),
                target_clipped_quantile=float(s.target_clipped_quantile),
                clip_norm_lr=float(s.clip_norm_lr),
                clipped_count_stddev=None if s.clipped_count_stddev is None else float(s.clipped_count_stddev),
            )
        except ValueError as error:
            raise ConfigError(f"federated.privacy.dp={self.mode}: {error}") from None

    def client_mods(self) -> list:
        """The Flower client mods of this federation, outermost first: SecAgg+ (``federated.privacy.secagg``),
        client-side clipping, and with DP the equal-weights mod (innermost)."""
        mods = []
        if self.settings.secagg:
            from tessera.federated.secagg import client_mods as secagg_mods

            mods += secagg_mods()
        if self.mode == "client_fixed":
            from flwr.clientapp.mod import fixedclipping_mod

            mods.append(fixedclipping_mod)
        elif self.mode == "client_adaptive":
            from flwr.clientapp.mod import adaptiveclipping_mod

            mods.append(adaptiveclipping_mod)
        if self.enabled:
            mods.append(equal_weights_mod)
        return mods

    def exchange(self, most_examples: int, timeout: float | None):
        """The round exchange of :class:`~tessera.federated.rounds.Federation`: SecAgg+ with
        ``federated.privacy.secagg`` (``most_examples``: the largest client's examples, the default bound on a
        client's weight), else None (one plain exchange)."""
        if not self.settings.secagg:
            return None
        from tessera.federated.secagg import SecureAggregation

        bound = self.settings.secagg_max_weight
        if bound is None:
            bound = 1 if self.enabled else most_examples
        return SecureAggregation(self.settings, bound, timeout)

    def account(self, record: dict, history: list[dict]) -> None:
        """Add the privacy spent so far to a round's ``record`` (``history``: the rounds before it)."""
        if not self.enabled:
            return
        z = self.noise_multiplier * record["answered"] / max(1, record["clients"])
        record["privacy"] = {"noise_multiplier": z, "sample_rate": self.sample_rate}
        steps = [(r["privacy"]["noise_multiplier"], r["privacy"]["sample_rate"]) for r in history if "privacy" in r]
        record["privacy"]["epsilon"] = finite(epsilon([*steps, (z, self.sample_rate)], self.settings.delta))
        record["privacy"]["delta"] = self.settings.delta
        log.info(
            "round %d: epsilon %s at delta %g spent so far (noise multiplier %.3f, sample rate %.3g)",
            record["round"],
            "unbounded (no noise)" if record["privacy"]["epsilon"] is None else f"{record['privacy']['epsilon']:.3f}",
            self.settings.delta,
            z,
            self.sample_rate,
        )

    def summary(self, history: list[dict]) -> dict:
        """The federation's privacy for ``metrics.json``: the mode, the noise, and epsilon at delta after the
        rounds run (null without DP)."""
        s = self.settings
        found = {"dp": self.mode, "secagg": bool(s.secagg)}
        if not self.enabled:
            return {**found, "epsilon": None, "delta": None}
        steps = [(r["privacy"]["noise_multiplier"], r["privacy"]["sample_rate"]) for r in history if "privacy" in r]
        return {
            **found,
            "epsilon": finite(epsilon(steps, s.delta)),
            "delta": s.delta,
            "noise_multiplier": self.noise_multiplier,
            "target_epsilon": s.target_epsilon,
            "sample_rate": self.sample_rate,
            "accountant": "rdp (opacus), user-level DP-FedAvg",
        }


def _towards_the_quantile(self, clipped_fraction: float) -> None:
    """Andrew et al.'s geometric update of the clipping norm, with Flower's clipped (not unclipped) fraction:
    ``C <- C * exp(lr * (clipped - target))``, so that C grows while more updates than the target are clipped."""
    self.clipping_norm *= math.exp(self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile))


class ServerSideAdaptiveClipping(_flower.DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with the norm's update turned the right way: flwr 1.32.1 counts the
    *clipped* updates but applies the paper's rule for the *unclipped* fraction, ``C * exp(-lr * (clipped -
    target))``, so C shrinks when too many updates are clipped and runs away from the target quantile."""

    _geometric_update = _towards_the_quantile


class ClientSideAdaptiveClipping(_flower.DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping with the norm's update turned the right way (as
    :class:`ServerSideAdaptiveClipping`)."""

    _geometric_update = _towards_the_quantile


def equal_weights_mod(msg, ctxt, call_next):
    """A Flower client mod: the reply's ``num-examples`` (the weight FedAvg gives the update) becomes 1, so that
    every clipped update weighs ``1/n`` in the average, as DP-FedAvg's sensitivity ``C / n`` assumes; the real
    count stays in the ``examples`` metric."""
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    for record in out.content.metric_records.values():
        if "num-examples" in record:
            record[EXAMPLES_KEY] = record["num-examples"]
            record["num-examples"] = 1
    return out
