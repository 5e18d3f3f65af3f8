"""Optuna and Ray Tune adapters."""

from __future__ import annotations

import optuna
import pytest

from metacompress.spaces import (
    Categorical,
    CompressionPolicy,
    CompressionSpace,
    Int,
    LayerInfo,
    Ordinal,
    suggest,
    to_optuna,
    to_ray,
)

LAYERS = (
    LayerInfo("conv", "conv2d", 144, (16, 1, 3, 3)),
    LayerInfo("fc", "linear", 1600, (10, 160), structured=False),
)


@pytest.fixture
def space() -> CompressionSpace:
    return CompressionSpace(
        LAYERS,
        prune_method=Categorical(("unstructured", "structured")),
        act_bits=Categorical((None, 8)),
        epochs=Int(1, 16, log=True),
    )


def test_to_optuna_distributions(space: CompressionSpace) -> None:
    dists = to_optuna(space)
    assert list(dists) == list(space.params)
    assert dists["prune.conv"] == optuna.distributions.FloatDistribution(0.0, 0.95)
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["epochs"] == optuna.distributions.IntDistribution(1, 16, log=True)
    assert dists["bits.fc"] == optuna.distributions.CategoricalDistribution([2, 3, 4, 5, 6, 8])
    assert dists["act_bits"] == optuna.distributions.CategoricalDistribution([None, 8])


def test_suggest_in_a_real_study(space: CompressionSpace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    warm = CompressionPolicy.uniform(space.layer_names, prune=0.5, bits=4, lr=1e-3, epochs=2, kd_lambda=0.3,
                                     temperature=2.0)
    study.enqueue_trial(space.encode(warm))
    policies: list[CompressionPolicy] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        policy = space.decode(suggest(trial, space))
        policies.append(policy)
        return 1.0 - policy.mean_prune(space.n_params), policy.mean_bits(space.n_params)

    study.optimize(objective, n_trials=6)
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    assert policies[0] == warm  # the enqueued warm start is evaluated as given
    dists = to_optuna(space)
    for trial in study.trials:
        assert trial.distributions == dists
        assert space.contains(trial.params)


def test_to_ray_domains(space: CompressionSpace) -> None:
    from ray.tune.search import sample

    ray_space = to_ray(space)
    assert list(ray_space) == list(space.params)
    prune = ray_space["prune.conv"]
    assert isinstance(prune, sample.Float) and (prune.lower, prune.upper) == (0.0, 0.95)
    assert isinstance(prune.get_sampler(), sample.Float._Uniform)
    lr = ray_space["lr"]
    assert isinstance(lr, sample.Float) and isinstance(lr.get_sampler(), sample.Float._LogUniform)
    epochs = ray_space["epochs"]
    assert isinstance(epochs, sample.Integer) and (epochs.lower, epochs.upper) == (1, 17)  # Ray: upper exclusive
    assert isinstance(epochs.get_sampler(), sample.Integer._LogUniform)
    linear = to_ray(CompressionSpace(LAYERS, epochs=Int(1, 3)))["epochs"]
    assert (linear.lower, linear.upper) == (1, 4) and isinstance(linear.get_sampler(), sample.Integer._Uniform)
    bits = ray_space["bits.fc"]
    assert isinstance(bits, sample.Categorical) and bits.categories == [2, 3, 4, 5, 6, 8]
    assert ray_space["act_bits"].categories == [None, 8]
    draws = [{k: d.sample() for k, d in ray_space.items()} for _ in range(20)]
    assert all(space.contains(p) for p in draws)


def test_ordinal_float_values_pass_through() -> None:
    space = CompressionSpace(LAYERS, prune=Ordinal((0.0, 0.25, 0.5)))
    assert to_optuna(space)["prune.conv"].choices == (0.0, 0.25, 0.5)
    assert to_ray(space)["prune.fc"].categories == [0.0, 0.25, 0.5]
