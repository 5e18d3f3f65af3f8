"""A neural retention predictor meta-trained with Reptile (first-order MAML), one task per episode.

Meta-training (Nichol et al., 2018): for each episode, copy the weights ``θ``, take ``inner_steps`` SGD steps on
a support batch of one task, and move ``θ`` a fraction ``meta_lr`` (annealed to 0) towards the adapted weights.
The result predicts zero-shot from the task's meta-features and adapts to a new task in a few gradient steps on its
first finished trials (:meth:`ReptilePredictor.adapt`). Weights are saved as safetensors plus a JSON config.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from metacompress.spaces import ConfigError, invalid_value

__all__ = ["ReptilePredictor", "FLYWHEEL_EPOCHS", "FLYWHEEL_META_LR"]

#: Meta-training epochs with which a grown history continues the pretrained predictor (``warm_start``), and
#: the initial Reptile step of that continuation (annealed to 0 as in a full fit; the full fit starts at 0.5).
FLYWHEEL_EPOCHS = 15
FLYWHEEL_META_LR = 0.1

_CLIP = 4.0  # standardized inputs are clipped to [-_CLIP, _CLIP]


def _net(n_in: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.SiLU()]
        width = int(h)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _check_xy(estimator: Any, X: Any, y: Any | None = None, *, fitting: bool = False, adapting: bool = False,
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """``X`` as a 2-D float array (NaN = not measured) and ``y`` as finite floats, with scikit-learn's checks and
    messages (dense, real, finite but for NaN in ``X``).

    ``fitting``: ``y`` is required. Otherwise ``estimator`` must be fitted (``NotFittedError``) on rows of ``X``'s
    width. ``adapting``: ``y`` is required and no rows is allowed (a task with no finished trial yet).
    The errors are :class:`~metacompress.spaces.ConfigError` (a ``ValueError``) naming ``X`` or ``y``.
    """
    from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d  # noqa: PLC0415

    name = type(estimator).__name__
    if not fitting:
        check_is_fitted(estimator, "n_features_in_")
    try:
        X = check_array(X, dtype=np.float64, ensure_all_finite="allow-nan", estimator=estimator,
                        ensure_min_samples=0 if adapting else 1)
    except ValueError as exc:  # a TypeError (objects that are no numbers) stays one
        raise ConfigError(str(exc), "X") from None
    if not fitting and X.shape[1] != estimator.n_features_in_:
        raise ConfigError(f"X has {X.shape[1]} features, but {name} is expecting {estimator.n_features_in_} "
                          "features as input.", "X")
    if y is None:
        if fitting or adapting:
            raise ConfigError(f"{name} requires y to be passed, but the target y is None.", "y")
        return X, None
    try:
        y = column_or_1d(check_array(y, dtype=np.float64, ensure_2d=False, estimator=estimator,
                                     ensure_min_samples=0 if adapting else 1), warn=True)
    except ValueError as exc:
        raise ConfigError(str(exc), "y") from None
    if len(y) != len(X):
        raise invalid_value("y", f"{len(X)} finite values, one per row of X", f"{len(y)} values")
    return X, y


class NaNInputs:
    """Tags a predictor's inputs as allowed to hold NaN: a measurement a row does not have (a proxy not measured)."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.input_tags.allow_nan = True
        return tags


class ReptilePredictor(NaNInputs, RegressorMixin, BaseEstimator):
    """Retention predictor: an MLP meta-trained with Reptile across tasks.

    Args:
        hidden: Hidden layer widths.
        inner_steps: SGD steps on one task per meta-training episode.
        inner_lr: SGD learning rate of the inner loop and of :meth:`adapt`.
        meta_lr: Initial Reptile step size (linearly annealed to 0).
        meta_epochs: Passes over all tasks.
        support_size: Rows per inner step.
        adapt_steps: Default number of SGD steps of :meth:`adapt`.
        warm_start: When fitted already, :meth:`fit` continues meta-training from the current weights (and input
            scaling) for ``meta_epochs`` more epochs instead of starting afresh, as scikit-learn's ``warm_start``:
            how a grown history updates the pretrained predictor in seconds (:data:`FLYWHEEL_EPOCHS`).
        random_state: Seed of the initialisation and of the episode order.
    """

    def __init__(self, hidden: Sequence[int] = (64, 64), inner_steps: int = 5, inner_lr: float = 0.02,
                 meta_lr: float = 0.5, meta_epochs: int = 150, support_size: int = 32, adapt_steps: int = 20,
                 warm_start: bool = False, random_state: int = 0) -> None:
        self.hidden = hidden
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.meta_lr = meta_lr
        self.meta_epochs = meta_epochs
        self.support_size = support_size
        self.adapt_steps = adapt_steps
        self.warm_start = warm_start
        self.random_state = random_state

    # ------------------------------------------------------------------------------------------------ training
    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        # clipped: a new task's meta-features may lie far outside the training tasks' range; a missing (NaN)
        # input takes the training mean
        z = np.nan_to_num(np.clip((X - self.x_mean_) / self.x_scale_, -_CLIP, _CLIP), nan=0.0)
        return torch.tensor(z, dtype=torch.float32)

    def _sgd(self, x: torch.Tensor, y: torch.Tensor, steps: int, rng: np.random.Generator | None) -> None:
        opt = torch.optim.SGD(self.net_.parameters(), lr=self.inner_lr)
        for _ in range(steps):
            idx = slice(None) if rng is None or len(y) <= self.support_size else \
                torch.as_tensor(rng.choice(len(y), self.support_size, replace=False))
            opt.zero_grad()
            loss = nn.functional.mse_loss(self.net_(x[idx]).squeeze(1), y[idx])
            loss.backward()
            opt.step()

    def fit(self, X: Any, y: Any, groups: Any = None) -> ReptilePredictor:
        """Meta-train on rows ``X`` (meta-features ⊕ encoding), targets ``y``; ``groups`` names each row's task.

        Without ``groups`` all rows form one task (plain SGD training). A missing input (NaN) takes the column's
        training mean.
        """
        X, y = _check_xy(self, X, y, fitting=True)
        groups = np.zeros(len(y)) if groups is None else np.asarray(groups)
        if len(groups) != len(y):
            raise invalid_value("groups", f"{len(y)} task labels", len(groups))
        with torch.random.fork_rng(devices=[]):  # seeded from random_state; the caller's torch RNG is left as it was
            torch.manual_seed(int(self.random_state))
            return self._meta_train(X, y, groups)

    def _meta_train(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> ReptilePredictor:
        rng = np.random.default_rng(self.random_state)
        if not (self.warm_start and getattr(self, "n_features_in_", None) == X.shape[1]):
            measured = np.isfinite(X).any(0)
            mean = np.nanmean(np.where(measured, X, 0.0), 0)
            std = np.nanstd(np.where(measured, X, 0.0), 0)
            self.x_mean_, self.x_scale_ = mean, np.where(std > 1e-9, std, 1.0)
            self.n_features_in_ = X.shape[1]
            self.net_ = _net(X.shape[1], self.hidden)
            with torch.no_grad():
                self.net_[-1].bias.fill_(float(y.mean()))
        self.net_.train()
        x, t = self._tensor(X), torch.tensor(y, dtype=torch.float32)
        tasks = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        for epoch in range(int(self.meta_epochs)):
            step = self.meta_lr * (1.0 - epoch / max(int(self.meta_epochs), 1))
            for k in rng.permutation(len(tasks)):
                before = [p.detach().clone() for p in self.net_.parameters()]
                idx = torch.as_tensor(tasks[k])
                self._sgd(x[idx], t[idx], int(self.inner_steps), rng)
                with torch.no_grad():
                    for p, p0 in zip(self.net_.parameters(), before):
                        p.copy_(p0 + step * (p - p0))
        self.net_.eval()
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted accuracy retention of each row."""
        X, _ = _check_xy(self, X)
        with torch.no_grad():
            return self.net_(self._tensor(X)).squeeze(1).double().numpy()

    def adapt(self, X_task: Any, y_task: Any, steps: int | None = None) -> ReptilePredictor:  # noqa: N803
        """Return a copy fine-tuned with ``steps`` full-batch SGD steps on one task's finished trials."""
        X_task, y_task = _check_xy(self, X_task, y_task, adapting=True)
        out = copy.deepcopy(self)
        if len(y_task):
            out.net_.train()
            out._sgd(out._tensor(X_task), torch.tensor(y_task, dtype=torch.float32),
                     int(self.adapt_steps if steps is None else steps), None)
            out.net_.eval()
        return out

    # ------------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path, input_names: Sequence[str]) -> None:
        """Write ``<path>.safetensors`` (weights, input scaling) and ``<path>.json`` (class, params, inputs)."""
        from safetensors.torch import save_file  # noqa: PLC0415

        stem = Path(path).with_suffix("")
        tensors = {f"net.{k}": v.contiguous() for k, v in self.net_.state_dict().items()}
        tensors["x_mean"] = torch.as_tensor(self.x_mean_, dtype=torch.float64)
        tensors["x_scale"] = torch.as_tensor(self.x_scale_, dtype=torch.float64)
        save_file(tensors, str(stem.with_suffix(".safetensors")))
        params = self.get_params()
        params["hidden"] = [int(h) for h in params["hidden"]]
        config = {"class": "ReptilePredictor", "params": params, "input_names": list(input_names)}
        stem.with_suffix(".json").write_text(json.dumps(config, indent=1), encoding="utf-8")

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ReptilePredictor:
        """Rebuild a fitted predictor from its JSON params and safetensors tensors (see ``load_predictor``)."""
        model = cls(**params)
        model.x_mean_ = tensors["x_mean"].numpy()
        model.x_scale_ = tensors["x_scale"].numpy()
        model.n_features_in_ = len(model.x_mean_)
        model.net_ = _net(model.n_features_in_, model.hidden)
        model.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        model.net_.eval()
        return model
