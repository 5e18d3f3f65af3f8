"""Meta-learning warm start: meta-features, exact sizes, encodings, history, predictors, proposals."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from torch import nn

from metacompress.learners import compress, describe_layers, load_task, size_bytes
from metacompress.learners.meta import (
    ENCODING_NAMES,
    FEATURE_NAMES,
    INPUT_NAMES,
    MEASURED_NAMES,
    PROXY_NAME,
    TUNED_PROXY_NAME,
    GBMRetentionPredictor,
    History,
    ProxyProbe,
    ReptilePredictor,
    SizeModel,
    encode_arrays,
    encode_policy,
    exact_size_bytes,
    hypervolume_order,
    layer_sensitivity,
    load_default_predictor,
    load_predictor,
    make_row,
    meta_artifact,
    propose,
    save_predictor,
    task_meta_features,
    warm_start_points,
)
from metacompress.learners.meta.encoding import scalar_arrays
from metacompress.learners.meta.predictors import (
    ADAPT_DECISIVE,
    FLYWHEEL_TREES,
    pick_weight,
    rows_digest,
    within_task_rank,
)
from metacompress.learners.meta.pool import CandidatePool, from_unit_array
from metacompress.spaces import (
    Categorical,
    CompressionPolicy,
    CompressionSpace,
    ConfigError,
    Float,
    Int,
    LayerPolicy,
    Ordinal,
)


class SmallResNet(nn.Module):
    """Residual conv net with a flatten into a linear head: every channel coupling at once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(12 * 16, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(x + self.bn2(self.conv2(x)))
        x = self.relu(self.conv3(x))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


#: Column of the measured proxy in a history's X (the tuned proxy follows it).
P = INPUT_NAMES.index(PROXY_NAME)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and shared CI cores are not oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """digits-mlp from the default teacher cache ($METACOMPRESS_CACHE): trains in seconds the first time."""
    return load_task("digits-mlp")


@pytest.fixture(scope="session")
def wine():
    return load_task("wine-mlp")


@pytest.fixture(scope="session")
def digits_meta(digits):
    layers = describe_layers(digits.teacher, digits.example_input(2))
    sens = layer_sensitivity(digits, layers)
    return layers, sens, task_meta_features(digits, layers=layers, sensitivity=sens)


def _space(layers, **kw) -> CompressionSpace:
    return CompressionSpace(layers, bits=Ordinal((2, 3, 4, 6, 8)), **kw)


# ----------------------------------------------------------------------------------------------- meta-features
def test_meta_features_are_deterministic_finite_and_fast(digits, wine):
    t0 = time.perf_counter()
    first = task_meta_features(digits, seed=0)
    assert time.perf_counter() - t0 < 10
    assert tuple(first) == FEATURE_NAMES
    assert all(math.isfinite(v) for v in first.values())
    assert task_meta_features(digits, seed=0) == first
    assert tuple(task_meta_features(wine)) == FEATURE_NAMES


def test_layer_sensitivity_restores_the_teacher(digits):
    before = {k: v.clone() for k, v in digits.teacher.state_dict().items()}
    sens = layer_sensitivity(digits)
    assert set(sens) == {"fc1", "fc2", "head"}
    assert {"prune50", "bits4", "qerr4", "energy50"} <= set(sens["fc1"])
    assert all(torch.equal(before[k], v) for k, v in digits.teacher.state_dict().items())


def test_layer_sensitivity_is_computed_once_per_teacher_state(digits):
    from metacompress.learners.meta import clear_sensitivity_cache, features

    clear_sensitivity_cache()
    first = layer_sensitivity(digits)
    again = layer_sensitivity(digits)
    assert again == first and again is not first
    again["fc1"]["prune50"] = -1.0  # callers get copies: the cache is not theirs to change
    assert layer_sensitivity(digits)["fc1"]["prune50"] == first["fc1"]["prune50"]
    clear_sensitivity_cache()
    assert not features._SENSITIVITY_CACHE
    assert layer_sensitivity(digits) == first  # recomputed from scratch: deterministic
    weight = digits.teacher.fc1.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[: weight.shape[0] // 2].zero_()
        assert layer_sensitivity(digits)["fc1"] != first["fc1"]  # other weights: probed again
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert layer_sensitivity(digits) == first


# ------------------------------------------------------------------------------------------------- exact sizes
def test_size_model_equals_size_bytes_unstructured(digits, digits_meta):
    layers = digits_meta[0]
    size_model = SizeModel(digits.teacher)
    assert size_model.teacher_bytes == size_bytes(digits.teacher)
    space = CompressionSpace(layers, bits=Ordinal((2, 3, 5, 8, 16, 32)), act_bits=Ordinal((4, 8, 32)))
    rng = random.Random(0)
    policies = [space.decode(space.sample(rng)) for _ in range(8)]
    policies.append(CompressionPolicy(layers={"fc1": LayerPolicy(0.5, 4)}))  # other layers left alone
    policies.append(CompressionPolicy.uniform(space.layer_names, prune=1e-5, bits=8))  # rounds to no mask
    for policy in policies:
        assert size_model.policy_bytes(policy) == size_bytes(compress(digits.teacher, policy))
    assert exact_size_bytes(policies[0], layers, digits) == size_bytes(compress(digits.teacher, policies[0]))


def test_size_model_equals_size_bytes_structured():
    torch.manual_seed(0)
    model, example = SmallResNet().eval(), torch.randn(2, 1, 8, 8)
    layers = describe_layers(model, example)
    size_model = SizeModel(model, example)
    space = _space(layers, prune_method=Categorical(("structured",)))
    rng = random.Random(1)
    for _ in range(6):
        policy = space.decode(space.sample(rng))
        assert size_model.policy_bytes(policy) == size_bytes(compress(model, policy, example))


# --------------------------------------------------------------------------------------------------- encoding
def test_encoding_is_layer_count_agnostic(digits, digits_meta):
    layers, sens, _ = digits_meta
    torch.manual_seed(0)
    conv, example = SmallResNet().eval(), torch.randn(2, 1, 8, 8)
    conv_layers = describe_layers(conv, example)
    conv_sens = {info.name: {**sens["fc1"]} for info in conv_layers}  # probes of the right keys
    a = encode_policy(CompressionPolicy.uniform([i.name for i in layers], 0.5, 4), layers, sens,
                      SizeModel(digits.teacher))
    b = encode_policy(CompressionPolicy.uniform([i.name for i in conv_layers], 0.5, 4), conv_layers, conv_sens,
                      SizeModel(conv, example))
    assert len(layers) != len(conv_layers)
    assert tuple(a) == tuple(b) == ENCODING_NAMES
    assert all(math.isfinite(v) for v in (*a.values(), *b.values()))
    assert a["prune_mean"] == pytest.approx(0.5) and a["bits_mean"] == 4


def test_encode_arrays_matches_encode_policy(digits, digits_meta):
    layers, sens, _ = digits_meta
    space = _space(layers, feature_beta=Float(0.0, 2.0), prox_mu=Float(0.0, 1.0))
    size_model = SizeModel(digits.teacher)
    policies = [space.decode(p) for p in space.space_filling(5, seed=3)]
    names = space.layer_names
    prune = np.array([[p.layer(n).prune for n in names] for p in policies])
    bits = np.array([[p.layer(n).bits for n in names] for p in policies])
    ratio = np.array([size_model.teacher_bytes / size_model.policy_bytes(p) for p in policies])
    rows = encode_arrays(prune, bits, scalar_arrays(policies), layers, sens, ratio)
    for row, policy in zip(rows, policies):
        assert row == pytest.approx(list(encode_policy(policy, layers, sens, size_model).values()))


def test_the_feature_and_proximal_weights_are_part_of_the_encoding(digits, digits_meta):
    """A search that turns either term on adds rows the predictor can tell apart from plain KD."""
    layers, sens, _ = digits_meta
    names, size_model = [i.name for i in layers], SizeModel(digits.teacher)
    plain = encode_policy(CompressionPolicy.uniform(names, 0.5, 4), layers, sens, size_model)
    both = encode_policy(CompressionPolicy.uniform(names, 0.5, 4, feature_beta=0.5, prox_mu=0.1), layers, sens,
                         size_model)
    assert plain["log1p_feature_beta"] == plain["log1p_prox_mu"] == 0.0
    assert both["log1p_feature_beta"] == pytest.approx(math.log1p(0.5))
    assert both["log1p_prox_mu"] == pytest.approx(math.log1p(0.1))
    assert {k for k in plain if plain[k] != both[k]} == {"log1p_feature_beta", "log1p_prox_mu"}
    pool = CandidatePool.sobol(_space(layers, feature_beta=Float(0.0, 2.0)), 64, seed=0)
    assert np.ptp(pool.scalars["feature_beta"]) > 1.0 and not pool.scalars["prox_mu"].any()


def test_rows_written_before_the_newest_encoding_columns_read_as_those_terms_off(tmp_path):
    path = tmp_path / "old.csv"
    History.from_rows(_rows(2, 5)).to_csv(path)
    frame = pd.read_csv(path).drop(columns=["log1p_feature_beta", "log1p_prox_mu"])  # an older CSV
    frame.to_csv(path, index=False)
    old = History.from_csv(path)
    assert len(old) == 10 and old.n_skipped == 0
    assert (old.frame[["log1p_feature_beta", "log1p_prox_mu"]] == 0.0).all().all()
    assert np.isfinite(old.X()[:, :-len(MEASURED_NAMES)]).all()  # the proxy: NaN where not measured


# ---------------------------------------------------------------------------------------------------- history
def _rows(n_tasks: int = 4, n: int = 24, seed: int = 0) -> list[dict]:
    """Synthetic rows with a real structure: retention falls with compression, plus a per-task offset."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tasks):
        feats = dict(zip(FEATURE_NAMES, rng.normal(size=len(FEATURE_NAMES))))
        offset = rng.uniform(-0.1, 0.1)
        for _ in range(n):
            enc = dict(zip(ENCODING_NAMES, rng.uniform(0, 1, size=len(ENCODING_NAMES))))
            enc["log_compression_ratio"] = lcr = rng.uniform(0, 4)
            acc = float(np.clip(0.9 - 0.1 * lcr + offset + rng.normal(0, 0.01), 0, 1))
            rows.append(make_row(f"task{t}", "s", feats, enc, {"accuracy": acc, "size_bytes": 100.0}, 0.95))
    return rows


def test_history_skips_and_counts_corrupt_rows(tmp_path):
    rows = _rows(2, 5)
    rows[0]["prune_mean"] = float("nan")
    rows[1]["accuracy"] = 1.7
    rows[2]["schema"] = 99
    rows[3]["task"] = ""
    history = History.from_rows(rows)
    assert len(history) == 6 and history.n_skipped == 4
    assert history.skipped["schema 99 (expected 1)"] == 1
    assert history.X().shape == (6, len(INPUT_NAMES)) and np.isfinite(history.y()).all()
    path = tmp_path / "h.csv"
    history.to_csv(path)
    again = History.from_csv(path)
    assert len(again) == 6 and again.tasks == history.tasks
    both = again.concat(history)
    assert len(both) == 12 and both.n_skipped == 4
    (tmp_path / "bad.csv").write_text("task,accuracy\nx,0.5\n")
    bad = History.from_csv(tmp_path / "bad.csv")
    assert len(bad) == 0 and bad.n_skipped == 1
    assert len(History.from_csv(tmp_path / "missing.csv")) == 0


def test_history_from_mlflow(tmp_path, digits, digits_meta):
    mlflow = pytest.importorskip("mlflow")
    layers, sens, feats = digits_meta
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    meta = meta_artifact(digits, layers, {"accuracy": 0.97, "size_bytes": 68904, "latency_ms": 0.1})
    assert meta["meta_features"] == feats and meta["sensitivity"] == sens
    for with_meta in (True, False):
        parent = client.create_run(exp, tags={"metacompress.role": "parent", "metacompress.study_name": "s"})
        if with_meta:
            (tmp_path / "meta.json").write_text(json.dumps(meta))
            client.log_artifact(parent.info.run_id, str(tmp_path / "meta.json"))
        policy = CompressionPolicy.uniform([i.name for i in layers], 0.5, 4)
        for number, params in enumerate([policy.to_dict(), {**policy.to_dict(), "layers.fc1.bits": "x"}]):
            child = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id,
                                                 "metacompress.role": "trial"})
            for k, v in params.items():
                client.log_param(child.info.run_id, k, v)
            for k, v in {"accuracy": 0.9, "size_bytes": 9000.0, "compression_ratio": 7.6}.items():
                client.log_metric(child.info.run_id, k, v)
            client.set_terminated(child.info.run_id)
    history = History.from_mlflow(uri)
    assert len(history) == 1 and history.tasks == ["digits-mlp"]
    assert history.n_skipped == 3  # a bad param, and two trials of a search without meta.json
    assert history.skipped["parent run without a readable meta.json (the trials of its search)"] == 2
    assert history.y()[0] == pytest.approx(0.9 / 0.97)


# ------------------------------------------------------------------------------------------------- predictors
@pytest.mark.parametrize("cls", [GBMRetentionPredictor, ReptilePredictor])
def test_predictors_are_sklearn_estimators(cls):
    history = History.from_rows(_rows(3, 16))
    model = cls(max_iter=30, random_state=1) if cls is GBMRetentionPredictor else cls(meta_epochs=10, random_state=1)
    clone(model)
    assert model.fit(history.X(), history.y(), history.groups()) is model
    assert clone(model).get_params() == model.get_params()
    assert model.predict(history.X()).shape == (len(history),)
    adapted = model.adapt(history.X()[:4], history.y()[:4])
    assert adapted is not model and adapted.predict(history.X()[:2]).shape == (2,)


@pytest.mark.parametrize("make", [lambda: GBMRetentionPredictor(max_iter=5),
                                  lambda: ReptilePredictor(hidden=(8,), meta_epochs=2, random_state=3)])
def test_the_predictors_keep_scikit_learns_contract_on_bad_calls(make):
    """predict before fit: NotFittedError; fit without targets, or predict on rows of another width: one error
    naming the argument; fitting leaves the caller's torch RNG as it was."""
    from sklearn.exceptions import NotFittedError

    rng = np.random.default_rng(0)
    X, y, groups = rng.uniform(size=(60, 5)), rng.uniform(0.5, 1.0, size=60), np.repeat([0, 1, 2], 20)
    with pytest.raises(NotFittedError):
        make().predict(X)
    with pytest.raises(ConfigError) as no_y:
        make().fit(X, None)
    assert no_y.value.field == "y"
    state = torch.get_rng_state()
    model = make().fit(X, y, groups)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.predict(X).shape == (60,) and clone(model).get_params() == model.get_params()
    from sklearn.utils import get_tags

    assert get_tags(model).input_tags.allow_nan  # NaN: a measurement the row does not have
    assert model.adapt(X[:0], y[:0]).predict(X[:2]).shape == (2,)  # a task with no finished trial yet
    for call in (lambda: model.predict(X[:, :3]), lambda: model.adapt(X[:5, :4], y[:5])):
        with pytest.raises(ConfigError) as narrow:
            call()
        assert narrow.value.field == "X" and "expecting 5 features" in str(narrow.value)


@pytest.mark.parametrize(("make", "known"), [
    (GBMRetentionPredictor, {"check_sample_weight_equivalence_on_dense_data":
                             "HistGradientBoostingRegressor, the trees inside, fails it with these settings too"}),
    (lambda: ReptilePredictor(meta_epochs=50),  # the default 150 fits the checks' data too, in 3x the time
     {"check_methods_subset_invariance":
      "float32 matrix products differ in the last bits with the batch's size (1e-7 checked)"}),
])
def test_the_predictors_pass_scikit_learns_estimator_checks(make, known):
    """Every check of ``check_estimator`` (6-8 s each) but one, each with its reason."""
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(make(), expected_failed_checks=known, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed == set() and len(results) > 40


def test_reptile_adaptation_reduces_error_on_a_held_out_task():
    rng = np.random.default_rng(0)

    def task(offset: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(-1, 1, size=(n, 3))  # a meta-feature that tells nothing, and two policy numbers
        return x, 0.8 - 0.3 * x[:, 1] ** 2 + 0.1 * x[:, 2] + offset

    parts = [task(o) for o in rng.uniform(-0.1, 0.1, size=8)]
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    groups = np.repeat(np.arange(8), 40)
    model = ReptilePredictor(hidden=(32, 32), meta_epochs=25, random_state=0).fit(X, y, groups)
    x_new, y_new = task(0.25)
    before = np.mean((model.predict(x_new[8:]) - y_new[8:]) ** 2)
    adapted = model.adapt(x_new[:8], y_new[:8], steps=30)
    after = np.mean((adapted.predict(x_new[8:]) - y_new[8:]) ** 2)
    assert after < 0.5 * before


def test_reptile_warm_start_continues_from_the_fitted_weights_and_scaling():
    rng = np.random.default_rng(1)
    X_old, X_new = rng.normal(size=(200, 3)), rng.normal(2.0, 1.0, size=(200, 3))
    y_old, y_new = 0.8 - 0.1 * X_old[:, 0], 0.5 + 0.1 * X_new[:, 1]
    g = np.repeat(np.arange(4), 50)
    model = ReptilePredictor(hidden=(16,), meta_epochs=20, random_state=0).fit(X_old, y_old, g)
    mean, weights = model.x_mean_.copy(), [p.detach().clone() for p in model.net_.parameters()]
    before = np.mean((model.predict(X_new) - y_new) ** 2)
    model.set_params(warm_start=True, meta_epochs=10, meta_lr=0.5)
    assert model.fit(X_new, y_new, g) is model
    np.testing.assert_array_equal(model.x_mean_, mean)  # the scaling the pretrained weights learned on is kept
    assert any(not torch.equal(p, w) for p, w in zip(model.net_.parameters(), weights))
    assert np.mean((model.predict(X_new) - y_new) ** 2) < 0.5 * before
    fresh = clone(model).set_params(warm_start=False).fit(X_new, y_new, g)
    assert not np.allclose(fresh.x_mean_, mean)  # without warm_start: a refit, scaling and all
    wider = clone(model).fit(X_old[:, :2], y_old, g)  # warm_start on an unfitted model (or other width): a fit
    assert wider.n_features_in_ == 2


def test_predictor_persistence_never_unpickles(tmp_path, monkeypatch):
    history = History.from_rows(_rows(2, 12))
    model = ReptilePredictor(meta_epochs=5).fit(history.X(), history.y(), history.groups())
    config = save_predictor(model, tmp_path / "reptile")
    loaded = load_predictor(config)
    assert np.allclose(loaded.predict(history.X()), model.predict(history.X()), atol=1e-6)

    def refuse(*_a, **_k):
        raise AssertionError("pickle must never be loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ConfigError, match="pickle is never loaded"):
        load_predictor(evil)
    (tmp_path / "evil.json").write_text(config.read_text())  # a valid config next to a pickle in disguise
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ConfigError, match="safetensors"):
        load_predictor(tmp_path / "evil.safetensors")
    (tmp_path / "other.json").write_text(json.dumps({"class": "ReptilePredictor", "input_names": ["a"]}))
    with pytest.raises(ConfigError, match="version"):
        load_predictor(tmp_path / "other.json")


def _measured_rows(n_tasks: int = 3, n: int = 40, seed: int = 0) -> History:
    """:func:`_rows` with both proxies recorded on most rows (so the GBM fits its measured tiers)."""
    rng = np.random.default_rng(seed)
    rows = _rows(n_tasks, n, seed)
    for row in rows:
        row[PROXY_NAME] = float(np.clip(row["accuracy"] / 0.95 + rng.normal(0, 0.05), 0, 1.2))
        row[TUNED_PROXY_NAME] = float(np.clip(row["accuracy"] / 0.95 + rng.normal(0, 0.02), 0, 1.2))
        if rng.random() < 0.2:
            row[TUNED_PROXY_NAME] = float("nan")
    return History.from_rows(rows)


@pytest.mark.parametrize("params", [{}, {"n_ensemble": 2, "target": "rank", "max_depth": 3}])
def test_gbm_saves_its_fitted_trees_as_arrays_and_loads_them_exactly(tmp_path, monkeypatch, params):
    history = _measured_rows()
    X, y = history.X(), history.y()
    model = GBMRetentionPredictor(max_iter=40, **params).fit(X, y, history.groups())
    assert len(model.tiers_) == 2
    config = save_predictor(model, tmp_path / "gbm")
    saved = json.loads(config.read_text())
    assert saved["trees"] == "gbm.npz" and saved["fit_digest"] == model.fit_digest_
    with np.load(tmp_path / "gbm.npz", allow_pickle=False) as npz:  # numbers only: no object array to unpickle
        assert all(npz[name].dtype.kind in "biuf" for name in npz.files)

    def refuse(*_a, **_k):
        raise AssertionError("a saved GBM must load without pickle or a refit")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(GBMRetentionPredictor, "fit", refuse)
    loaded = load_predictor(tmp_path / "gbm.npz")
    assert loaded.get_params() == model.get_params() and loaded.fit_digest_ == model.fit_digest_
    X_mixed = X.copy()
    X_mixed[::3, P + 1] = np.nan  # rows of every tier: no proxy, the proxy only, both
    X_mixed[::5, P:] = np.nan
    np.testing.assert_array_equal(loaded.predict(X_mixed), model.predict(X_mixed))  # bit for bit
    np.testing.assert_array_equal(loaded.predict_std(X_mixed), model.predict_std(X_mixed))
    task = history.groups() == "task0"
    a, b = model.adapt(X[task][:8], y[task][:8]), loaded.adapt(X[task][:8], y[task][:8])
    assert a.adapted_votes_ == b.adapted_votes_
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_a_gbm_that_focuses_saves_its_params_and_refits_on_load(tmp_path):
    history = _measured_rows(3, 20)
    model = GBMRetentionPredictor(max_iter=5, similarity=1.0).fit(history.X(), history.y(), history.groups())
    config = save_predictor(model, tmp_path / "gbm")
    assert not (tmp_path / "gbm.npz").exists() and "trees" not in json.loads(config.read_text())
    loaded = load_predictor(config)  # refit on the shipped meta-dataset: it keeps the rows focus() needs
    assert loaded.rows_ is not None and loaded.fit_digest_ == rows_digest(
        History.shipped().X(), History.shipped().y(), History.shipped().groups())


def test_a_gbm_trees_file_is_checked_before_use(tmp_path):
    history = _measured_rows(3, 20)
    model = GBMRetentionPredictor(max_iter=5).fit(history.X(), history.y(), history.groups())
    config = save_predictor(model, tmp_path / "gbm")
    with np.load(tmp_path / "gbm.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}

    def load_with(**changed):
        np.savez(tmp_path / "bad.npz", **(arrays | changed))
        (tmp_path / "bad.json").write_text(config.read_text().replace("gbm.npz", "bad.npz"))
        return load_predictor(tmp_path / "bad.json")

    with pytest.raises(ConfigError, match="readable .npz"):  # a pickled object array is refused, not run
        load_with(layout=np.array([{"x": 1}], dtype=object))
    right = arrays["m0.right"].copy()
    right[0] = 10**6
    with pytest.raises(ConfigError, match="child index outside"):
        load_with(**{"m0.right": right})
    inner = np.flatnonzero(~arrays["m0.is_leaf"].astype(bool))
    shared = arrays["m0.left"].copy()
    shared[inner[1]] = shared[inner[0]]  # two splits share a child: a graph that could blow up, not a tree
    with pytest.raises(ConfigError, match="not a forest"):
        load_with(**{"m0.left": shared})
    with pytest.raises(ConfigError, match=r"no 't\d\.m0\.meta'"):  # one tier more than the file holds
        load_with(layout=arrays["layout"] + [0, 1, 0, 0])
    with pytest.raises(ConfigError, match="trees on the first"):
        load_with(layout=arrays["layout"] - [0, 0, 0, 1])
    (tmp_path / "up.json").write_text(config.read_text().replace('"gbm.npz"', '"../gbm.npz"'))
    with pytest.raises(ConfigError, match="next to the config"):
        load_predictor(tmp_path / "up.json")
    (tmp_path / "gone.json").write_text(config.read_text().replace('"gbm.npz"', '"gone.npz"'))
    with pytest.raises(ConfigError, match="readable .npz"):
        load_predictor(tmp_path / "gone.json")
    for damaged in (b"PK\x03\x04" + b"\x00" * 64, (tmp_path / "gbm.npz").read_bytes()[:200], b"not a zip"):
        (tmp_path / "bad.npz").write_bytes(damaged)
        (tmp_path / "bad.json").write_text(config.read_text().replace("gbm.npz", "bad.npz"))
        with pytest.raises(ConfigError, match="readable .npz"):
            load_predictor(tmp_path / "bad.json")


def test_array_trees_predict_as_the_estimator_deep_trees_and_missing_values(monkeypatch):
    from sklearn.ensemble import HistGradientBoostingRegressor

    from metacompress.learners.meta import trees

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values at fit time: the trees learn where they go
    y = np.nan_to_num(X[:, 0]) * 2 + np.sin(np.nan_to_num(X[:, 1])) + rng.normal(0, 0.1, 600)
    deep = HistGradientBoostingRegressor(max_iter=20, max_leaf_nodes=64, min_samples_leaf=2).fit(X, y)
    fast = trees.ArrayTrees.from_estimator(deep)
    assert fast._steps > 4 and fast._layout is not None
    X_new = rng.normal(size=(700, 5)) * 2
    X_new[rng.random(X_new.shape) < 0.2] = np.nan
    np.testing.assert_array_equal(fast.predict(X_new), deep.predict(X_new))
    monkeypatch.setattr(trees, "COMPLETE_MAX_DEPTH", 2)  # deeper trees: one tree at a time
    slow = trees.ArrayTrees.from_arrays(fast.arrays("a."), "a.")
    assert slow._layout is None
    np.testing.assert_array_equal(slow.predict(X_new), deep.predict(X_new))
    with pytest.raises(ConfigError, match="rows of 5 columns"):
        fast.predict(X_new[:, :4])


def test_the_shipped_gbm_is_the_fit_of_the_shipped_meta_dataset():
    """The shipped trees were fit on exactly the shipped rows (a build that changed one without the other fails)."""
    shipped = History.shipped()
    gbm = load_default_predictor("gbm")
    assert gbm.fit_digest_ == rows_digest(shipped.X(), shipped.y(), shipped.groups())
    assert not hasattr(gbm.models_[0], "_predictors")  # the arrays, not a refit


def test_the_shipped_history_is_read_once_per_file_version(tmp_path, monkeypatch):
    from metacompress.learners.meta import history as history_module

    path = tmp_path / "shipped.csv.gz"
    History.from_rows(_rows(2, 5)).to_csv(path)
    monkeypatch.setattr(history_module, "data_path", lambda name: path)
    monkeypatch.setattr(history_module, "_SHIPPED", {})
    first = History.shipped()
    first.skipped["mine"] += 1  # a caller's skip count stays its own
    second = History.shipped()
    assert len(second) == 10 and second.n_skipped == 0 and second._frame is first._frame
    History.from_rows(_rows(3, 5)).to_csv(path)  # a rebuilt meta-dataset is read again
    assert len(History.shipped()) == 15


# -------------------------------------------------------------------------------------------------- proposals
def test_vectorized_from_unit_matches_domains():
    u = np.random.default_rng(0).uniform(size=200)
    for domain in (Float(0.0, 0.9), Float(1e-4, 1e-2, log=True), Int(1, 3), Int(1, 100, log=True)):
        assert np.allclose(from_unit_array(domain, u), [domain.from_unit(float(x)) for x in u])
    for domain in (Ordinal((2, 3, 4, 8)), Categorical(("unstructured", "structured"))):
        idx = from_unit_array(domain, u)
        assert [domain.landmarks()[i] for i in idx] == [domain.from_unit(float(x)) for x in u]


@pytest.fixture(scope="module")
def fitted_gbm():
    history = History.from_rows(_rows(3, 40))
    return GBMRetentionPredictor(max_iter=50).fit(history.X(), history.y(), history.groups())


def test_propose_returns_k_distinct_decodable_points_on_the_front(digits, digits_meta, fitted_gbm):
    layers, sens, feats = digits_meta
    space = _space(layers, prune_method=Categorical(("unstructured", "structured")), epochs=Int(1, 3))
    size_model = SizeModel(digits.teacher, digits.example_input(2))
    t0 = time.perf_counter()
    proposals = propose(space, layers, feats, fitted_gbm, k=8, n_candidates=10_000, seed=0,
                        size_model=size_model, sensitivity=sens)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10  # ~0.3 s measured; generous for shared CI machines
    assert len(proposals) == 8
    assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) == 8
    for p in proposals:
        policy = space.decode(p.params)
        assert p.predicted["size_bytes"] == size_bytes(compress(digits.teacher, policy, digits.example_input(2)))
    sizes = np.array([p.predicted["size_bytes"] for p in proposals])
    assert len(set(sizes)) > 1
    retention = np.array([p.predicted["accuracy_retention"] for p in proposals])
    assert hypervolume_order(retention, sizes / size_model.teacher_bytes) == list(range(8))  # already in run order


def test_hypervolume_order_runs_the_largest_predicted_gain_first():
    retention = np.array([0.2, 0.99, 0.9, 0.9])
    size = np.array([0.01, 0.2, 0.05, 0.5])  # single-point volumes 0.198, 0.792, 0.855, 0.45
    # 2 first; then 1 adds 0.072 and 0 adds 0.008; 3 is dominated by 2 and adds nothing
    assert hypervolume_order(retention, size) == [2, 1, 0, 3]
    assert hypervolume_order(np.array([0.5, 0.5]), np.array([0.3, 0.3])) == [0, 1]


def test_warm_start_cold_starts_with_a_reason(digits, digits_meta):
    space = _space(digits_meta[0])
    points, reason = warm_start_points(space, digits, history=History())
    assert points == [] and reason.startswith("cold start: the history is empty")
    assert "\n" not in reason
    points, reason = warm_start_points(space, digits, history=History.from_rows(_rows(2, 5)),
                                       objectives={"accuracy": "maximize", "energy_j": "minimize"})
    assert points == [] and "energy_j" in reason


def test_warm_start_points_with_a_history(digits, digits_meta, fitted_gbm):
    space = _space(digits_meta[0])
    history = History.from_rows(_rows(3, 10))
    points, reason = warm_start_points(space, digits, history=history, predictor=fitted_gbm, k=4,
                                       n_candidates=2048)
    assert len(points) == 4 and reason.startswith("warm start: 4 points")
    for params in points:
        space.decode(params)


def test_shipped_meta_dataset_and_default_predictor(digits, digits_meta):
    shipped = History.shipped()
    assert len(shipped) > 0 and shipped.n_skipped == 0 and "digits-mlp" in shipped.tasks
    for kind in ("gbm", "reptile"):
        assert load_default_predictor(kind).predict(shipped.X()[:3]).shape == (3,)
    space = _space(digits_meta[0])
    points, reason = warm_start_points(space, digits, k=4, n_candidates=4096)
    assert len(points) == 4 and "pretrained" in reason and "adapted on" in reason
    for params in points:
        space.decode(params)


def test_a_grown_history_continues_the_pretrained_reptile_instead_of_refitting(monkeypatch, tmp_path):
    from metacompress.learners.meta.context import _predictor_for
    from metacompress.learners.meta.reptile import FLYWHEEL_EPOCHS

    monkeypatch.setenv("METACOMPRESS_CACHE", str(tmp_path))  # the GBM below continues here, not from a cache

    shipped = History.shipped()
    grown = shipped.concat(History.from_rows(_rows(2, 30, seed=3)))  # two finished searches joined the history
    pretrained = load_default_predictor("reptile")
    predictor, source = _predictor_for(grown, "reptile")
    assert source == f"pretrained ReptilePredictor, meta-trained {FLYWHEEL_EPOCHS} more epochs on the history"
    np.testing.assert_array_equal(predictor.x_mean_, pretrained.x_mean_)
    new = grown.subset(["task0", "task1"])
    err = [np.mean((m.predict(new.X()) - new.y()) ** 2) for m in (pretrained, predictor)]
    assert err[1] < err[0]  # it learned from the new rows
    predictor, source = _predictor_for(grown, "gbm")
    assert source == "pretrained GBMRetentionPredictor, its boosting continued on the history"
    pretrained = load_default_predictor("gbm")
    assert len(predictor.models_[0].roots) == len(pretrained.models_[0].roots) + FLYWHEEL_TREES
    err = [np.mean((m.predict(new.X()) - new.y()) ** 2) for m in (pretrained, predictor)]
    assert err[1] < err[0]  # it learned from the new rows


def test_a_continued_gbm_is_cached_for_the_next_warm_start_on_the_same_history(monkeypatch, tmp_path):
    """suggest then search (or a resumed search) continue on an unchanged history: the second reads the first's
    continued trees from the cache folder, bit for bit; a damaged entry is continued again and replaced; a cache
    that cannot be written costs nothing but the time."""
    from metacompress.learners.meta.context import _predictor_for

    monkeypatch.setenv("METACOMPRESS_CACHE", str(tmp_path / "cache"))
    grown = History.shipped().concat(_measured_rows(2, 30, seed=4))
    first, source = _predictor_for(grown, "gbm")
    assert source == "pretrained GBMRetentionPredictor, its boosting continued on the history"
    entries = list((tmp_path / "cache" / "predictors").iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"gbm.json", "gbm.npz"}
    again, source = _predictor_for(grown, "gbm")
    assert source.endswith("continued on the history (read from the cache)") and again is not first
    X = grown.X()
    np.testing.assert_array_equal(again.predict(X), first.predict(X))
    own = grown.subset(["task0"])
    np.testing.assert_array_equal(again.adapt(own.X(), own.y()).predict(X), first.adapt(own.X(), own.y()).predict(X))
    other = grown.concat(_measured_rows(1, 10, seed=9).subset(["task0"]))  # one more search: another entry
    assert not _predictor_for(other, "gbm")[1].endswith("(read from the cache)")
    assert len(list((tmp_path / "cache" / "predictors").iterdir())) == 2

    (entries[0] / "gbm.npz").write_bytes(b"not a zip")  # damaged: continued again, the entry replaced
    again, source = _predictor_for(grown, "gbm")
    assert not source.endswith("(read from the cache)")
    np.testing.assert_array_equal(again.predict(X), first.predict(X))
    assert _predictor_for(grown, "gbm")[1].endswith("(read from the cache)")

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("METACOMPRESS_CACHE", str(tmp_path / "file"))  # not a folder: nothing cached, nothing lost
    again, source = _predictor_for(grown, "gbm")
    assert source == "pretrained GBMRetentionPredictor, its boosting continued on the history"
    np.testing.assert_array_equal(again.predict(X), first.predict(X))


def test_the_continued_gbm_cache_keeps_the_most_recently_used_entries(monkeypatch, tmp_path):
    from metacompress.learners.meta import context

    monkeypatch.setattr(context, "CONTINUED_KEEP", 2)
    rows = _measured_rows(3, 40, seed=0)
    model = GBMRetentionPredictor(max_iter=5).fit(rows.X(), rows.y(), rows.groups())
    for i, name in enumerate(("a", "b", "c")):
        context._store(model, tmp_path / name)
        os.utime(tmp_path / name, (i, i))  # stored in this order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]
    assert load_predictor(tmp_path / "c" / "gbm.json").fit_digest_ == model.fit_digest_


def test_gbm_warm_start_continues_boosting_on_a_grown_history(tmp_path):
    old, new = _measured_rows(3, 40, seed=0), _measured_rows(2, 40, seed=5)
    new = History(new.frame.assign(task=new.frame["task"] + "-new"))
    grown = old.concat(new)
    model = GBMRetentionPredictor(max_iter=20).fit(old.X(), old.y(), old.groups())
    before = model.predict(new.X())
    assert model.set_params(warm_start=True, max_iter=30).fit(grown.X(), grown.y(), grown.groups()) is model
    assert [len(m.roots) for m in model.models_] == [30] and len(model.tiers_) == 2
    assert all(len(m.roots) == 30 for models, _ in model.tiers_ for m in models)
    assert np.mean((model.predict(new.X()) - new.y()) ** 2) < np.mean((before - new.y()) ** 2)
    assert model.fit_digest_ == rows_digest(grown.X(), grown.y(), grown.groups())
    save_predictor(model, tmp_path / "gbm")  # the continued trees are one ensemble of arrays
    np.testing.assert_array_equal(load_predictor(tmp_path / "gbm.json").predict(grown.X()), model.predict(grown.X()))
    # what cannot continue fits afresh: another width, the rank target (its level model), focusing (its rows)
    narrower = model.fit(grown.X()[:, :-1], grown.y(), grown.groups())
    assert narrower.models_[0].n_iter_ == 30 and narrower.n_features_in_ == grown.X().shape[1] - 1
    for params in ({"target": "rank"}, {"similarity": 1.0}):
        fresh = GBMRetentionPredictor(max_iter=10, **params).fit(old.X(), old.y(), old.groups())
        fresh.set_params(warm_start=True, max_iter=15).fit(grown.X(), grown.y(), grown.groups())
        assert fresh.models_[0].n_iter_ <= 15 and hasattr(fresh.models_[0], "_predictors")  # a new estimator


def test_hedged_and_front_strategies_both_give_k_distinct_valid_points(digits, digits_meta, fitted_gbm):
    layers, sens, feats = digits_meta
    space = _space(layers, prune_method=Categorical(("unstructured", "structured")), epochs=Int(1, 3))
    size_model = SizeModel(digits.teacher, digits.example_input(2))
    sizes = {}
    for strategy in ("hedged", "front"):
        proposals = propose(space, layers, feats, fitted_gbm, k=6, n_candidates=2_000, seed=1,
                            size_model=size_model, sensitivity=sens, strategy=strategy)
        assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) == len(proposals) == 6
        for p in proposals:
            space.decode(p.params)
        sizes[strategy] = sorted(p.predicted["size_bytes"] for p in proposals)
    # hedged points are spread over log-size bins up to half the teacher: no two share a bin
    logs = np.log(sizes["hedged"])
    assert np.all(np.diff(logs) > 0)
    with pytest.raises(ConfigError, match="strategy"):
        propose(space, layers, feats, fitted_gbm, k=2, size_model=size_model, sensitivity=sens, strategy="best")


def test_hedged_batch_fills_an_empty_bin_with_a_measured_point(digits_meta):
    """A size bin no candidate falls in is filled from the predicted front, and, when the batch measures, by the
    measured front candidates that add the most re-scored hypervolume: every point of a measured batch was
    measured."""
    from metacompress.learners.meta.propose import _hedge_bins, _select_hedged
    from metacompress.learners.meta.sequential import hv_gain

    space = _space(digits_meta[0])
    pool = CandidatePool.sobol(space, 400, 0)
    rng = np.random.default_rng(0)
    # two clusters of sizes, 1-2 % and 30-50 % of the teacher's: the bins between them are empty
    size = np.where(np.arange(400) < 200, rng.uniform(0.01, 0.02, 400), rng.uniform(0.3, 0.5, 400)) * 1e6
    logs = np.log(size)
    retention = np.clip(0.6 + 0.4 * (logs - logs.min()) / np.ptp(logs) + rng.normal(0, 0.02, 400), 0, 1)
    bins = _hedge_bins(retention, size, 6, 0.5, 1e6)
    assert 0 < sum(len(b) == 0 for b in bins) < 6
    rescored = retention - 0.03 * (np.arange(400) % 5)  # what measuring says, another order than the prediction
    calls: list[np.ndarray] = []

    def measure(idx: np.ndarray) -> np.ndarray:
        calls.append(idx)
        return rescored[idx]

    chosen = _select_hedged(pool, retention.copy(), size, 6, 0.5, 1e6, measure, shortlist=4)
    assert len({pool.key(i) for i in chosen}) == len(chosen) == 6
    assert set(chosen) <= set(np.concatenate(calls).tolist())  # no point of the batch is an unchecked guess
    missing = sum(len(b) == 0 for b in bins)
    assert len(calls) == 2 and len(calls[1]) == 4 * missing  # the bins' shortlists, then the fill's
    binned = chosen[:-missing]  # each fill point adds the most re-scored hypervolume to the points before it
    for j, point in enumerate(chosen[-missing:]):
        before = np.array([(1 - retention[i], size[i] / 1e6) for i in binned] +
                          [(1 - rescored[i], size[i] / 1e6) for i in chosen[len(binned):len(binned) + j]])
        left = [i for i in calls[1] if i not in chosen[len(binned):len(binned) + j]]
        gains = hv_gain(before, np.array([(1 - rescored[i], size[i] / 1e6) for i in left]))
        assert point == left[int(np.argmax(gains))] and gains.max() > 0
    plain = _select_hedged(pool, retention.copy(), size, 6, 0.5, 1e6)  # not measuring: the front as predicted
    assert len(plain) == 6 and plain[-missing:] != chosen[-missing:]


# ------------------------------------------------------------------------------------------ the measured proxy
def test_proxy_probe_measures_accuracy_before_fine_tuning(digits, digits_meta):
    names = [i.name for i in digits_meta[0]]
    probe = ProxyProbe(digits)
    untouched = probe(CompressionPolicy.uniform(names, 0.0, 8))
    crushed = probe(CompressionPolicy.uniform(names, 0.9, 2))
    assert untouched == pytest.approx(1.0, abs=0.02)  # 8 bits, nothing pruned: the teacher's accuracy
    assert 0.0 <= crushed < 0.75  # 2 bits and 90 % pruned, no fine-tuning: much of the accuracy is gone
    policy = CompressionPolicy.uniform(names, 0.5, 4)
    student = compress(digits.teacher, policy, digits.example_input(2)).train()
    assert probe.student_retention(student) == probe(policy) and student.training  # mode restored
    many = probe.many([policy] * 3, budget_s=0.0)
    assert many[0] == probe(policy) and np.isnan(many[1:]).all()  # the budget stops after the first


def test_proxy_rows_are_validation_rows_only(digits):
    from metacompress.learners.data import dataset_tensors
    from metacompress.learners.meta.features import PROBE_ROWS, _probe_data

    x_val, y_val = dataset_tensors(digits.val)
    assert len(y_val) < PROBE_ROWS  # digits: 360 validation rows, so the sensitivity probes top up with training rows
    assert len(_probe_data(digits, 0)[1]) == PROBE_ROWS
    probe = ProxyProbe(digits)
    assert len(probe.y) == len(y_val) and torch.equal(probe.x, x_val)  # the proxy: the rows a trial is scored on
    teacher_val = float((digits.teacher(x_val).argmax(1) == y_val).float().mean())
    assert probe.teacher_accuracy == pytest.approx(teacher_val)


def test_tuned_proxy_is_the_first_fine_tuning_steps_of_the_very_trial(digits, digits_meta):
    """The tuned proxy replays the first tuned_steps() steps of a trial's fine-tuning (same loss, schedule, seed and
    batches); a search trial records the same value for free, from its own student after those steps."""
    from metacompress.learners.distill import FinetuneConfig, finetune
    from metacompress.learners.meta import tuned_steps
    from metacompress.search.objective import Objective, teacher_metrics

    assert tuned_steps(2, 1437, 64) == 20 and tuned_steps(1, 100, 64) == 1 and tuned_steps(3, 512, 64) == 12
    assert tuned_steps(0, 1437, 64) == 0  # no fine-tuning: the tuned proxy is the proxy
    layers = digits_meta[0]
    space = _space(layers, prune_method=Categorical(("unstructured", "structured")), epochs=Int(1, 3))
    objective = Objective(digits, space, teacher_metrics(digits, latency_repeats=1), batch_size=32, device="cpu",
                          latency_repeats=0, seed=3)
    probe = ProxyProbe(digits)
    for params in space.space_filling(3, 0):
        out = objective(params)
        tuned = probe.tuned(out.policy, seed=3, batch_size=32)
        assert out.metrics[TUNED_PROXY_NAME] == tuned and 0.0 <= tuned <= 1.5
    # steps overrides the count: the default's own count gives the same value, none gives the untrained proxy
    assert probe.tuned(out.policy, seed=3, batch_size=32, steps=probe.steps(out.policy, 32)) == tuned
    assert probe.tuned(out.policy, seed=3, batch_size=32, steps=0) == probe(out.policy)
    # the student behind it, for other looks than its accuracy: the same student, and it did train
    student = probe.tuned_student(out.policy, seed=3, batch_size=32)
    assert probe.student_retention(student) == tuned
    untrained = probe.tuned_student(out.policy, seed=3, batch_size=32, steps=0)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                      untrained.state_dict().values(), strict=True))
    # stop_after: the full run's student after its first steps (the schedule spans the full run), steps counted
    policy = CompressionPolicy.uniform([i.name for i in layers], 0.6, 3, epochs=2, lr=3e-3)
    seen, snapshot = [], {}

    def on_step(step: int) -> None:
        seen.append(step)
        if step == 7:
            snapshot.update({k: v.clone() for k, v in student.state_dict().items()})

    torch.manual_seed(0)
    student = compress(digits.teacher, policy, digits.example_input(2))
    finetune(student, digits.teacher, digits.train, policy, config=FinetuneConfig(seed=1, on_step=on_step))
    assert seen == list(range(1, 2 * math.ceil(len(digits.train) / 64) + 1))
    torch.manual_seed(0)
    cut = compress(digits.teacher, policy, digits.example_input(2))
    records = finetune(cut, digits.teacher, digits.train, policy, config=FinetuneConfig(seed=1, stop_after=7))
    assert len(records) == 1 and all(torch.equal(v, snapshot[k]) for k, v in cut.state_dict().items())


def test_history_reads_rows_without_the_proxy_as_unmeasured(tmp_path):
    rows = _rows(2, 5)
    assert all(math.isnan(r[PROXY_NAME]) for r in rows)  # make_row: the metrics did not record it
    # a CSV from before the proxies
    frame = History.from_rows(rows).frame.drop(columns=[PROXY_NAME, TUNED_PROXY_NAME])
    frame.to_csv(tmp_path / "old.csv", index=False)
    old = History.from_csv(tmp_path / "old.csv")
    assert len(old) == 10 and old.n_skipped == 0 and np.isnan(old.X()[:, P:]).all()
    rows[0][PROXY_NAME] = float("inf")
    rows[1][PROXY_NAME] = 0.7
    rows[2][TUNED_PROXY_NAME] = -0.1
    history = History.from_rows(rows)
    assert history.skipped == {f"invalid {PROXY_NAME}": 1, f"invalid {TUNED_PROXY_NAME}": 1}
    assert history.X()[0, P] == 0.7 and np.isnan(history.X()[0, P + 1])


def test_gbm_uses_the_proxy_where_measured_and_predicts_without_it():
    rng = np.random.default_rng(0)
    rows = _rows(4, 60)
    for r in rows:  # the retention is the proxy plus noise: only the proxy ranks the rows
        r[PROXY_NAME] = proxy = rng.uniform(0.2, 1.0)
        r["accuracy"] = float(np.clip(0.95 * (proxy + rng.normal(0, 0.05)), 0, 1))
    history = History.from_rows(rows)
    X, y, g = history.X(), history.y(), history.groups()
    model = GBMRetentionPredictor(max_iter=60).fit(X[g != "task3"], y[g != "task3"], g[g != "task3"])
    Xq, yq = X[g == "task3"], y[g == "task3"]
    unmeasured = Xq.copy()
    unmeasured[:, P] = np.nan
    rho = [np.corrcoef(np.argsort(np.argsort(model.predict(x))), np.argsort(np.argsort(yq)))[0, 1]
           for x in (Xq, unmeasured)]
    assert rho[0] > 0.8 and abs(rho[1]) < 0.4  # measured: ranks; unmeasured: the base model cannot
    assert np.isfinite(model.predict(unmeasured)).all() and np.isfinite(model.predict_std(Xq)).all()
    reptile = ReptilePredictor(meta_epochs=5).fit(unmeasured, yq, np.zeros(len(yq)))  # NaN: the training mean
    assert np.isfinite(reptile.predict(unmeasured)).all() and np.isfinite(reptile.predict(Xq)).all()
    with pytest.raises(ConfigError, match="infinity"):
        model.predict(np.full_like(Xq, np.inf))


def test_gbm_predicts_each_row_by_the_deepest_measured_tier():
    """Rows with the tuned proxy go to the tier that learned from it; rows with the proxy alone to the proxy's tier,
    which is the model a GBM fit without the tuned column learns; adapt re-weighs each tier on its own rows."""
    rng = np.random.default_rng(1)
    rows = _rows(5, 60)
    for r in rows:  # the proxy says little, the tuned proxy nearly all of the retention
        r[TUNED_PROXY_NAME] = tuned = rng.uniform(0.2, 1.0)
        r[PROXY_NAME] = float(np.clip(tuned + rng.normal(0, 0.4), 0.0, 1.0))
        r["accuracy"] = float(np.clip(0.95 * (tuned + rng.normal(0, 0.03)), 0, 1))
    history = History.from_rows(rows)
    X, y, g = history.X(), history.y(), history.groups()
    train = g != "task4"
    model = GBMRetentionPredictor(max_iter=60).fit(X[train], y[train], g[train])
    assert len(model.tiers_) == 2
    Xq, yq = X[~train], y[~train]
    proxy_only = Xq.copy()
    proxy_only[:, P + 1] = np.nan

    def rho(pred: np.ndarray) -> float:
        return float(np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(yq)))[0, 1])

    assert rho(model.predict(Xq)) > 0.9 and rho(model.predict(proxy_only)) < 0.8
    untuned = X.copy()
    untuned[:, P + 1] = np.nan  # the same rows without the tuned proxy: only the proxy's tier can be fit
    without = GBMRetentionPredictor(max_iter=60).fit(untuned[train], y[train], g[train])
    assert len(without.tiers_) == 1 and model.predict(proxy_only) == pytest.approx(without.predict(proxy_only))
    adapted = model.adapt(Xq[:8], yq[:8])
    assert set(adapted.adapted_proxy_weights_) == {1, 2}  # both tiers voted on the task's own trials
    assert set(model.adapt(proxy_only[:8], yq[:8]).adapted_proxy_weights_) == {1}
    for t in (1, 2):  # each tier's weight follows from its vote and its prior
        assert adapted.adapted_proxy_weights_[t] == pick_weight(adapted.adapted_votes_[t], model._proxy_weight(t))


def test_adapt_leaves_the_prior_only_on_a_decisive_vote():
    """A ranker is picked when it wins at least ADAPT_DECISIVE of the resamples; a closer vote keeps the prior
    weight instead of blending (a blend ranked held-out synthetic tasks worse: experiments/results/adapt.md)."""
    assert ADAPT_DECISIVE == 0.8
    assert pick_weight(0.8, 0.0) == 1.0 and pick_weight(0.95, 0.5) == 1.0
    assert pick_weight(0.2, 1.0) == 0.0 and pick_weight(0.0, 0.5) == 0.0
    assert pick_weight(0.79, 0.0) == 0.0 and pick_weight(0.21, 1.0) == 1.0 and pick_weight(0.5, 0.25) == 0.25
    assert pick_weight(0.6, 0.0, decisive=0.55) == 1.0


def test_gbm_focus_weights_the_history_towards_the_tasks_like_the_new_one():
    """Eight tasks where the proxy raises retention and one, far from them in meta-features and with fewer rows,
    where it lowers it: focused on a new task like that one, the refit weighs its rows most and predicts the new
    task closer than the plain fit, in which the many tasks outvote the one."""
    rng = np.random.default_rng(2)
    rows = []
    kinds = {f"common{t}": 1.0 for t in range(8)} | {"rare": -1.0, "new": -1.0}
    for name, sign in kinds.items():
        feats = dict(zip(FEATURE_NAMES, rng.normal(0.0, 0.1, len(FEATURE_NAMES)) + (3.0 if sign < 0 else 0.0)))
        for r in _rows(1, 60 if name != "rare" else 40, seed=int(rng.integers(1 << 30))):
            r.update(feats, task=name, **{k: 0.5 for k in ENCODING_NAMES})  # only the task and the proxy vary
            r[PROXY_NAME] = proxy = rng.uniform(0.2, 1.0)
            r["accuracy"] = float(np.clip(0.95 * (0.6 + sign * 0.3 * (proxy - 0.6)) + rng.normal(0, 0.005), 0, 1))
            rows.append(r)
    history = History.from_rows(rows)
    X, y, g = history.X(), history.y(), history.groups()
    train, new = g != "new", g == "new"
    plain = GBMRetentionPredictor(max_iter=60, similarity=None).fit(X[train], y[train], g[train])
    model = GBMRetentionPredictor(max_iter=60, similarity=1.0).fit(X[train], y[train], g[train])
    assert GBMRetentionPredictor().similarity is None and plain.focus(X[new][0]) is plain  # nothing to focus
    features = dict(zip(FEATURE_NAMES, X[new][0, : len(FEATURE_NAMES)]))
    focused = model.focus(features)
    weights = focused.task_weights_
    assert weights["rare"] > 0.9 and max(weights[f"common{t}"] for t in range(8)) < 0.05
    assert min(weights.values()) >= 0.02  # the floor: no task is ignored
    assert model.task_weights(X[new][0, : len(FEATURE_NAMES)]) == weights  # a vector or a mapping alike
    assert not hasattr(model, "task_weights_")  # focus returns a refit copy
    by_hand = GBMRetentionPredictor(max_iter=60, similarity=1.0).fit(X[train], y[train], g[train],
                                                     sample_weight=[weights[t] for t in g[train]])
    assert focused.predict(X[new]) == pytest.approx(by_hand.predict(X[new]))  # a fit with those row weights

    def scores(m: GBMRetentionPredictor) -> tuple[float, float]:
        pred = m.predict(X[new])
        return float(np.corrcoef(pred, y[new])[0, 1]), float(np.mean(np.abs(pred - y[new])))

    (rho_plain, mae_plain), (rho_focused, mae_focused) = scores(plain), scores(focused)
    assert rho_focused > rho_plain + 0.02 and mae_focused < 0.8 * mae_plain
    with pytest.raises(ConfigError, match="'similarity'"):
        GBMRetentionPredictor(similarity=0.0).fit(X[train], y[train])
    with pytest.raises(ConfigError, match="'similarity'"):
        GBMRetentionPredictor(similarity=None).fit(X[train], y[train]).task_weights(features)
    with pytest.raises(ConfigError, match="'sample_weight'"):
        GBMRetentionPredictor().fit(X[train], y[train], sample_weight=-np.ones(int(train.sum())))


def test_within_task_rank_is_the_percentile_within_each_group():
    ranks = within_task_rank([0.3, 0.1, 0.2, 0.9, 0.9, 0.5], ["a", "a", "a", "b", "b", "b"])
    assert ranks == pytest.approx([2.5 / 3, 0.5 / 3, 1.5 / 3, 2 / 3, 2 / 3, 0.5 / 3])  # ties share their mean rank


def test_gbm_rank_target_orders_by_the_trees_and_levels_by_the_task():
    """Two families of tasks, told apart by a meta-feature: retention near 0.9 falling little with compression,
    and near 0.6 falling steeply. With ``target="rank"`` the trees fit each row's rank within its task and the level
    model maps it back: a new task of the second family is predicted in its order *and* at its level."""
    rng = np.random.default_rng(3)
    rows = []
    for t in range(10):
        steep = t % 2 == 1 or t == 9
        feats = dict(zip(FEATURE_NAMES, rng.normal(0.0, 0.1, len(FEATURE_NAMES))))
        feats[FEATURE_NAMES[0]] = 2.0 if steep else -2.0
        for r in _rows(1, 60, seed=int(rng.integers(1 << 30))):
            r.update(feats, task=f"task{t}")
            lcr = r["log_compression_ratio"]
            level, slope = (0.6, 0.12) if steep else (0.9, 0.02)
            r["accuracy"] = float(np.clip(0.95 * (level - slope * (lcr - 2) + rng.normal(0, 0.005)), 0, 1))
            rows.append(r)
    history = History.from_rows(rows)
    X, y, g = history.X(), history.y(), history.groups()
    train, new = g != "task9", g == "task9"
    model = GBMRetentionPredictor(max_iter=80, target="rank").fit(X[train], y[train], g[train])
    pred = model.predict(X[new])
    raw = np.mean([m.predict(X[new][:, : -len(MEASURED_NAMES)]) for m in model.models_], axis=0)
    assert 0.0 <= raw.min() and raw.max() <= 1.0 + 1e-6  # the trees fit ranks within a task ...
    assert np.array_equal(np.argsort(pred, kind="stable"), np.argsort(raw, kind="stable"))  # ... their order kept
    assert np.corrcoef(pred, y[new])[0, 1] > 0.9 and np.mean(np.abs(pred - y[new])) < 0.05  # ... at its level
    assert clone(model).get_params()["target"] == "rank"  # saved with the predictor's params
    with pytest.raises(ConfigError, match="'target'"):
        GBMRetentionPredictor(target="quantile").fit(X[train], y[train])


def _proxy_task(name: str, proxy_share: float, n: int, rng: np.random.Generator) -> list[dict]:
    """Rows of one task whose retention is set partly (``proxy_share``) by the proxy, the rest by compression."""
    rows = _rows(1, n, seed=int(rng.integers(1 << 30)))
    for r in rows:
        r["task"] = name
        r[PROXY_NAME] = proxy = rng.uniform(0.2, 1.0)
        by_ratio = 1.0 - 0.2 * r["log_compression_ratio"]
        r["accuracy"] = float(np.clip(0.95 * (proxy_share * proxy + (1 - proxy_share) * by_ratio)
                                      + rng.normal(0, 0.005), 0, 1))
    return rows


def test_gbm_blends_the_proxy_and_adapt_reweighs_it_by_ranking_on_the_task():
    rng = np.random.default_rng(0)
    train = History.from_rows([r for t in range(4) for r in _proxy_task(f"task{t}", 0.5, 80, rng)])
    model = GBMRetentionPredictor(max_iter=80, proxy_weight=0.5).fit(train.X(), train.y(), train.groups())
    w0 = GBMRetentionPredictor(max_iter=80, proxy_weight=0.0).fit(train.X(), train.y(), train.groups())
    w1 = GBMRetentionPredictor(max_iter=80, proxy_weight=1.0).fit(train.X(), train.y(), train.groups())
    X = train.X()[:40]
    calibrated = w1.predict(X)  # the proxy alone, on the retention scale of the training rows
    assert np.all(np.diff(calibrated[np.argsort(X[:, P])]) > 0)  # in the proxy's order, no ties
    assert np.mean(np.abs(calibrated - train.y()[:40])) < np.mean(np.abs(X[:, P] - train.y()[:40]))
    assert model.predict(X) == pytest.approx(0.5 * w0.predict(X) + 0.5 * calibrated)
    unmeasured = X.copy()
    unmeasured[:, P] = np.nan
    assert model.predict(unmeasured) == pytest.approx(w1.predict(unmeasured))  # no proxy: the base model alone

    def rho(m: GBMRetentionPredictor, h: History) -> float:
        return float(np.corrcoef(np.argsort(np.argsort(m.predict(h.X()[8:]))), np.argsort(np.argsort(h.y()[8:])))[0, 1])

    for proxy_share in (1.0, 0.5):  # a task where only the proxy ranks, and one like the training tasks
        new = History.from_rows(_proxy_task("new", proxy_share, 60, rng))
        adapted = model.adapt(new.X()[:8], new.y()[:8])
        weight = adapted.adapted_proxy_weights_[1]  # from 0.5 to the ranker that orders the task's trials
        assert weight == (1.0 if proxy_share == 1.0 else 0.0)
        assert rho(adapted, new) > 0.9 and rho(adapted, new) > rho(model, new) + 0.02
        assert model.proxy_weight == 0.5 and not hasattr(model, "adapted_proxy_weights_")  # a copy adapted
    few = model.adapt(new.X()[:2], new.y()[:2])  # too few trials to rank: only the shift
    assert not hasattr(few, "adapted_proxy_weights_") and few.offset_ != 0.0
    assert GBMRetentionPredictor().proxy_weight == 0.0  # the default: the measured model until adapted
    with pytest.raises(ConfigError, match="proxy_weight"):
        GBMRetentionPredictor(proxy_weight=1.5).fit(train.X(), train.y())


def test_propose_measures_the_shortlist_and_scores_with_the_proxy(digits, digits_meta):
    layers, sens, feats = digits_meta
    shipped = History.shipped()
    model = GBMRetentionPredictor(max_iter=60).fit(shipped.X(), shipped.y(), shipped.groups())
    space = _space(layers, prune_method=Categorical(("unstructured", "structured")), epochs=Int(1, 3))
    size_model = SizeModel(digits.teacher, digits.example_input(2))
    probe = ProxyProbe(digits)
    proposals = propose(space, layers, feats, model, k=6, n_candidates=2_000, seed=0, size_model=size_model,
                        sensitivity=sens, probe=probe, shortlist=4)
    assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) == len(proposals) == 6
    measured = [p for p in proposals if PROXY_NAME in p.predicted]
    assert len(measured) >= 4
    for p in measured:  # the proxy of the proposed policy, and the measured model's prediction with it
        assert p.predicted[PROXY_NAME] == probe(space.decode(p.params))
        row = np.array([[*(feats[f] for f in FEATURE_NAMES), *encode_policy(
            space.decode(p.params), layers, sens, size_model).values(), p.predicted[PROXY_NAME], np.nan]])
        assert p.predicted["accuracy_retention"] == pytest.approx(float(np.clip(model.predict(row)[0], 0, 1)))
    with pytest.raises(ConfigError, match="shortlist"):
        propose(space, layers, feats, model, k=2, size_model=size_model, sensitivity=sens, shortlist=0)


def test_propose_measures_the_tuned_proxy_of_each_bins_best(digits, digits_meta):
    """With ``tuned``, the best re-scored candidates of each bin get the tuned proxy, exactly the start of the
    trial they would run, and the proposal is the tuned tier's prediction with it."""
    layers, sens, feats = digits_meta
    shipped = History.shipped()
    model = GBMRetentionPredictor(max_iter=60).fit(shipped.X(), shipped.y(), shipped.groups())
    space = _space(layers, epochs=Int(1, 2))
    size_model = SizeModel(digits.teacher, digits.example_input(2))
    probe = ProxyProbe(digits)
    proposals = propose(space, layers, feats, model, k=3, n_candidates=500, seed=3, size_model=size_model,
                        sensitivity=sens, probe=probe, shortlist=3, tuned=2, batch_size=32)
    tuned = [p for p in proposals if TUNED_PROXY_NAME in p.predicted]
    assert len(tuned) == 3
    for p in tuned:
        policy = space.decode(p.params)
        assert p.predicted[TUNED_PROXY_NAME] == probe.tuned(policy, seed=3, batch_size=32)
        row = np.array([[*(feats[f] for f in FEATURE_NAMES), *encode_policy(policy, layers, sens, size_model).values(),
                         p.predicted[PROXY_NAME], p.predicted[TUNED_PROXY_NAME]]])
        assert p.predicted["accuracy_retention"] == pytest.approx(float(np.clip(model.predict(row)[0], 0, 1)))
    with pytest.raises(ConfigError, match="'tuned'"):
        propose(space, layers, feats, model, k=2, size_model=size_model, sensitivity=sens, shortlist=2, tuned=3)


# ----------------------------------------------------------------------------------------- sequential warm start
def test_hv_gain_is_the_hypervolume_a_point_adds():
    import moocore

    from metacompress.learners.meta.sequential import hv_gain

    rng = np.random.default_rng(0)
    for m in (0, 1, 4, 9):
        front = rng.uniform(0, 1, size=(m, 2))
        cand = rng.uniform(0, 1, size=(20, 2))
        base = float(moocore.hypervolume(front, ref=[1.0, 1.0])) if m else 0.0
        want = [float(moocore.hypervolume(np.vstack([front, c[None]]), ref=[1.0, 1.0])) - base for c in cand]
        assert hv_gain(front, cand) == pytest.approx(want, abs=1e-12)


def test_sequential_proposer_is_stateless_and_reacts_to_the_observed_front(digits, digits_meta):
    from metacompress.learners.meta.sequential import sequential_for_task

    space = _space(digits_meta[0], prune_method=Categorical(("unstructured", "structured")))
    proposer, source = sequential_for_task(space, digits, n_candidates=2_000)
    assert proposer is not None and "pretrained" in source
    first = proposer.next([])
    assert np.isfinite(proposer.tuned).sum() == proposer.n_tuned == 3  # the 3 best by the proxy got tuned
    assert proposer.next([]) == first  # the same inputs give the same point (a resumed search goes on)
    index, params, predicted = first
    assert 0.0 <= predicted["accuracy_retention"] <= 1.0 and 0.0 <= predicted[PROXY_NAME] <= 1.5
    # the chosen point's tuned proxy was measured as the search's trial would run it (seed 0, batch size 64)
    assert predicted[TUNED_PROXY_NAME] == ProxyProbe(digits).tuned(space.decode(params), seed=0, batch_size=64)
    observed = [(1.0, predicted["size_ratio"])]  # the first point kept all the accuracy it was predicted to
    second = proposer.next(observed, residuals=[1.0 - predicted["model_retention"]], taken=[index])
    assert second[0] != index
    # a point is never proposed twice, and one the real front already beats is not proposed either
    assert second[2]["size_ratio"] < predicted["size_ratio"] or second[2]["accuracy_retention"] > 1.0 - 1e-9
    untuned, _ = sequential_for_task(space, digits, n_candidates=2_000, tuned=0)
    assert math.isnan(untuned.next([])[2][TUNED_PROXY_NAME])  # tuned=0: the proxy alone decides
    with pytest.raises(ConfigError, match="'tuned'"):
        sequential_for_task(space, digits, n_candidates=2_000, tuned=13)
    none, reason = sequential_for_task(space, digits, history=History())
    assert none is None and reason.startswith("cold start")


def test_a_tracking_store_that_cannot_be_read_is_a_skip_reason_not_a_crash(monkeypatch):
    """History.from_mlflow names the store in one ConfigError; History.collect (a warm start) counts it instead."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(ConfigError, match="'tracking_uri'.*readable MLflow tracking store"):
        History.from_mlflow(uri)
    history = History.collect(uri)
    assert len(history) == len(History.shipped())
    assert history.skipped[f"tracking store {uri} unreadable"] == 1
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:  # a database store whose driver is missing: the same
        with pytest.raises(ConfigError, match="No module named 'psycopg'"):
            History.from_mlflow("postgresql://u@127.0.0.1:9/db")


def test_the_gbm_ensemble_resamples_tasks_and_its_spread_shows_where_they_disagree():
    """n_ensemble > 1: members fit on bootstrap resamples of whole tasks; predict_std is their spread (0 for one)."""
    history = History.from_rows(_rows(6, 20))
    X, y, g = history.X(), history.y(), history.groups()
    single = GBMRetentionPredictor(max_iter=40, random_state=0).fit(X, y, g)
    assert not single.predict_std(X).any()
    ensemble = GBMRetentionPredictor(max_iter=40, n_ensemble=4, random_state=0).fit(X, y, g)
    assert len(ensemble.models_) == 4
    spread = ensemble.predict_std(X)
    assert spread.shape == (len(y),) and (spread > 0).mean() > 0.5  # the resamples see other tasks
    np.testing.assert_allclose(ensemble.predict(X), ensemble._predictions(X).mean(0))
    # one task: nothing to resample, every member sees the same rows (seeds differ, the trees barely)
    one = GBMRetentionPredictor(max_iter=40, n_ensemble=3, random_state=0).fit(X[g == "task0"], y[g == "task0"],
                                                                              g[g == "task0"])
    assert len(one.models_) == 3


def test_a_task_adapts_only_on_trials_of_its_own_model_whatever_its_name(wine):
    """A factory may return a built-in task's name for another model (or two factories one name): the shipped
    digits-mlp trials must not adapt the predictor of a wine model called digits-mlp, and the line says why."""
    import dataclasses

    from metacompress.learners.meta.context import task_context

    shipped = History.shipped()
    digits_rows = shipped.subset(["digits-mlp"])
    assert len(digits_rows.same_model(task_meta_features(load_task("digits-mlp")))) == len(digits_rows)
    impostor = dataclasses.replace(wine, name="digits-mlp")
    layers = describe_layers(impostor.teacher, impostor.example_input(2))
    context, source = task_context(_space(layers), impostor, history=shipped)
    assert context is not None and "adapted on" not in source
    assert f"not on {len(digits_rows)} trials of another model named 'digits-mlp'" in source
