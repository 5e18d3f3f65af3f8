"""Translate a :class:`~metacompress.spaces.space.CompressionSpace` to Optuna distributions and Ray Tune spaces.

Optuna and Ray are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .domains import Categorical, Domain, Float, Int, Ordinal

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from .space import CompressionSpace

__all__ = ["to_optuna", "suggest", "to_ray"]


def _unknown(domain: Domain) -> TypeError:
    return TypeError(f"No engine translation for domain type {type(domain).__name__}")


def to_optuna(space: CompressionSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """Return one Optuna distribution per searched parameter, in ``space.params`` order.

    :class:`Float` becomes ``FloatDistribution``, :class:`Int` ``IntDistribution`` (both keep ``log``), and
    :class:`Ordinal` / :class:`Categorical` become ``CategoricalDistribution``. Use it with ``optuna.create_trial``,
    ``study.ask(fixed_distributions)`` or to check enqueued warm starts.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, domain in space.params.items():
        if isinstance(domain, Float):
            out[name] = FloatDistribution(domain.low, domain.high, log=domain.log)
        elif isinstance(domain, Int):
            out[name] = IntDistribution(domain.low, domain.high, log=domain.log)
        elif isinstance(domain, (Ordinal, Categorical)):
            out[name] = CategoricalDistribution(list(domain.landmarks()))
        else:
            raise _unknown(domain)
    return out


def suggest(trial: optuna.trial.BaseTrial, space: CompressionSpace) -> dict[str, Any]:
    """Ask ``trial`` for every searched parameter (``trial.suggest_*``) and return the values by name.

    Pass the result to ``space.decode`` to get the trial's policy.
    """
    params: dict[str, Any] = {}
    for name, domain in space.params.items():
        if isinstance(domain, Float):
            params[name] = trial.suggest_float(name, domain.low, domain.high, log=domain.log)
        elif isinstance(domain, Int):
            params[name] = trial.suggest_int(name, domain.low, domain.high, log=domain.log)
        elif isinstance(domain, (Ordinal, Categorical)):
            params[name] = trial.suggest_categorical(name, list(domain.landmarks()))
        else:
            raise _unknown(domain)
    return params


def to_ray(space: CompressionSpace) -> dict[str, Any]:
    """Return a Ray Tune ``param_space`` with one sampler per searched parameter.

    :class:`Float` becomes ``tune.uniform`` / ``tune.loguniform``; :class:`Int` ``tune.randint(low, high + 1)`` /
    ``tune.lograndint(low, high + 1)`` (Ray's upper bound is exclusive); :class:`Ordinal` / :class:`Categorical`
    ``tune.choice``.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for name, domain in space.params.items():
        if isinstance(domain, Float):
            out[name] = (tune.loguniform if domain.log else tune.uniform)(domain.low, domain.high)
        elif isinstance(domain, Int):
            out[name] = (tune.lograndint if domain.log else tune.randint)(domain.low, domain.high + 1)
        elif isinstance(domain, (Ordinal, Categorical)):
            out[name] = tune.choice(list(domain.landmarks()))
        else:
            raise _unknown(domain)
    return out
