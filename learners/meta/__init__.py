"""Meta-learning for warm starts: task meta-features, policy encodings, trial history, predictors, proposals.

A predictor meta-learned from earlier compression searches proposes the first trials of a new search:

* :mod:`.features` — task meta-features and per-layer sensitivity probes (seconds).
* :mod:`.size` — exact ``size_bytes`` of compressed students, vectorized over candidates.
* :mod:`.encoding` — a model-agnostic encoding of a policy.
* :mod:`.proxy` — the measured proxy: a compressed student's accuracy before fine-tuning (milliseconds).
* :mod:`.history` / :mod:`.mlflow_source` — rows of (meta-features, encoding, outcomes) from the shipped
  meta-dataset and from MLflow.
* :mod:`.predictors` / :mod:`.reptile` — gradient boosting and a Reptile-meta-trained MLP (scikit-learn
  estimators, saved without pickle); :mod:`.trees` — fitted trees as numeric arrays, evaluated in numpy.
* :mod:`.context` — what a warm start knows of a task: the (adapted) predictor, probes and meta-features.
* :mod:`.pool` / :mod:`.propose` — score a candidate pool and choose k diverse points (the batch warm start).
* :mod:`.sequential` — the warm points one at a time, each against the front the finished trials observed.
"""

from .encoding import ENCODING_NAMES, encode_arrays, encode_policy
from .features import (
    FEATURE_NAMES,
    clear_sensitivity_cache,
    layer_sensitivity,
    task_meta_features,
    weight_statistics,
)
from .history import INPUT_NAMES, MEASURED_NAMES, OUTCOME_NAMES, SCHEMA_VERSION, History, make_row
from .mlflow_source import META_ARTIFACT, meta_artifact, policy_from_params
from .pool import CandidatePool
from .predictors import (
    PREDICTOR_KINDS,
    GBMRetentionPredictor,
    ReptilePredictor,
    load_default_predictor,
    load_predictor,
    make_predictor,
    save_predictor,
)
from .proxy import PROXY_NAME, TUNED_PROXY_NAME, ProxyProbe, tuned_steps
from .propose import Proposal, hypervolume_order, pareto_indices, propose, propose_for_task, warm_start_points
from .size import SizeModel, exact_size_bytes

__all__ = [
    "CandidatePool",
    "ENCODING_NAMES",
    "FEATURE_NAMES",
    "GBMRetentionPredictor",
    "History",
    "INPUT_NAMES",
    "MEASURED_NAMES",
    "META_ARTIFACT",
    "OUTCOME_NAMES",
    "PREDICTOR_KINDS",
    "PROXY_NAME",
    "TUNED_PROXY_NAME",
    "Proposal",
    "ProxyProbe",
    "ReptilePredictor",
    "SCHEMA_VERSION",
    "SizeModel",
    "clear_sensitivity_cache",
    "encode_arrays",
    "encode_policy",
    "exact_size_bytes",
    "layer_sensitivity",
    "load_default_predictor",
    "load_predictor",
    "make_predictor",
    "make_row",
    "meta_artifact",
    "pareto_indices",
    "policy_from_params",
    "hypervolume_order",
    "propose",
    "propose_for_task",
    "save_predictor",
    "task_meta_features",
    "tuned_steps",
    "warm_start_points",
    "weight_statistics",
]
