"""Bad input, fuzzed: generated YAML configs and ``retrain`` flags, each broken in exactly one field, and
``summary.json`` files for ``report`` with any JSON value anywhere.

Every case must end with exit code 2 and one line naming the field, and no traceback. The ≥ 500 cases run
in-process (``CliRunner``; validation happens before any training); a few run the console script in a subprocess
to show that nothing reaches stderr but that one line. ``experiments/bench_faults.py`` reuses :func:`bad_case`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from metacompress.search.cli import app

runner = CliRunner()
KNOWN = {"task", "study_name", "experiment_name", "out", "n_trials", "seed", "backend", "sampler", "objectives",
         "storage", "tracking_uri", "warm_start", "space", "train", "ray", "parallel"}

_junk = st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                  st.integers(), min_size=1, max_size=2), st.booleans())
_neg_int = st.integers(max_value=0)
_non_int = st.one_of(st.floats(allow_nan=True).filter(lambda f: not float(f).is_integer() if math.isfinite(f)
                                                      else True), st.text(max_size=5), st.booleans())
_bad_bits = st.lists(st.integers(-4, 64).filter(lambda b: b not in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)), min_size=1,
                     max_size=3)


def _word(exclude: set[str]) -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda w: w not in exclude)


#: (dotted field reported, strategy of (path in the config, bad value))
FIELDS: list[tuple[str, st.SearchStrategy[tuple[tuple[str, ...], Any]]]] = [
    ("n_trials", st.tuples(st.just(("n_trials",)), st.one_of(_neg_int, _non_int))),
    ("seed", st.tuples(st.just(("seed",)), st.one_of(st.integers(max_value=-1), _non_int))),
    ("backend", st.tuples(st.just(("backend",)), _word({"optuna", "ray"}))),
    ("sampler", st.tuples(st.just(("sampler",)), _word({"tpe", "nsga2", "gp", "random"}))),
    ("task", st.tuples(st.just(("task",)), _word({"digits_mlp"}).map(lambda w: w + "-task"))),
    ("space.prune", st.tuples(st.just(("space", "prune", "high")), st.floats(1.0, 1e6))),
    ("space.bits", st.tuples(st.just(("space", "bits")), _bad_bits)),
    ("space.epochs", st.tuples(st.just(("space", "epochs", "low")), st.integers(max_value=-1))),
    ("space.lr", st.tuples(st.just(("space", "lr", "low")), st.floats(max_value=0.0))),
    ("train.batch_size", st.tuples(st.just(("train", "batch_size")), st.one_of(_neg_int, _non_int))),
    ("train.trial_timeout_s", st.tuples(st.just(("train", "trial_timeout_s")), st.floats(max_value=0.0))),
    ("train.device", st.tuples(st.just(("train", "device")), _word({"auto", "cpu", "mps", "cuda"}))),
    ("ray.max_failures", st.tuples(st.just(("ray", "max_failures")), st.integers(max_value=-2))),
    ("warm_start.n_points", st.tuples(st.just(("warm_start", "n_points")), st.integers(max_value=-1))),
    ("storage", st.tuples(st.just(("storage",)), st.from_regex(r"[a-z]{1,8}", fullmatch=True))),
    ("", st.tuples(_word(KNOWN).map(lambda w: (w,)), _junk)),  # unknown top-level key: the key is the field
    ("space.", st.tuples(_word({"grouping", "prune", "prune_method", "bits", "act_bits", "kd_lambda", "temperature",
                                "epochs", "lr", "feature_beta", "prox_mu"}).map(lambda w: ("space", w)), _junk)),
]
#: (field, strategy of extra CLI args) for ``retrain`` flags.
FLAGS: list[tuple[str, st.SearchStrategy[list[str]]]] = [
    ("constraint", st.text(max_size=20).filter(lambda t: "<=" not in t and ">=" not in t).map(
        lambda t: ["--constraint", t])),
    ("constraint", st.tuples(st.sampled_from(["accuracy", "size_bytes", "latency_ms"]), st.sampled_from(["<=", ">="]),
                             st.floats(max_value=-1e-3, min_value=-1e9)).map(lambda c: ["--constraint",
                                                                                        f"{c[0]}{c[1]}{c[2]}"])),
    ("constraint", _word(set()).map(lambda w: ["--constraint", f"{w}x>=1"])),
    ("run_key", st.text(min_size=1, max_size=10).filter(lambda t: not t[:1].isalnum() or any(
        not (ch.isascii() and (ch.isalnum() or ch in "._-")) for ch in t)).map(lambda t: ["--run-key", t])),
    ("n_trials", st.one_of(st.integers(max_value=0).map(str), _word(set())).map(lambda t: ["--trials", t])),
    ("accuracy_tolerance", st.one_of(st.floats(min_value=1.001, max_value=1e9),
                                     st.floats(max_value=-1e-6, min_value=-1e9), _word(set())).map(
        lambda t: ["--accuracy-tolerance", str(t)])),
]


def base_config(tmp: Path) -> dict[str, Any]:
    """A valid job config whose stores live in ``tmp`` (nothing is trained: every case fails validation)."""
    return {"task": "digits-mlp", "n_trials": 2, "storage": f"sqlite:///{tmp}/study.db",
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "out": str(tmp / "out"), "warm_start": {"mode": "off"},
            "space": {"bits": [4, 8]}, "train": {"batch_size": 64}}


@st.composite
def bad_case(draw: Any) -> tuple[str, dict[str, Any] | None, list[str]]:
    """``(field, config mapping or None for a broken-YAML text case, extra flags)`` broken in one field."""
    if draw(st.integers(0, 3)) == 0:
        field, flags = draw(st.sampled_from(FLAGS).flatmap(lambda f: st.tuples(st.just(f[0]), f[1])))
        return field, {}, ["--registered-model", "m", *flags]
    field, (path, value) = draw(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f[0]), f[1])))
    if field in ("", "space."):
        field = ".".join(path)
    return field, {"__path__": list(path), "__value__": value}, ["--registered-model", "m"]


def write_case(tmp: Path, case: dict[str, Any]) -> Path:
    """The YAML of one case (the base config with the case's one bad value set)."""
    data = base_config(tmp)
    if case:
        node = data
        *parents, last = case["__path__"]
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = case["__value__"]
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def check(result: Any, field: str) -> str | None:
    """Why ``result`` breaks the contract (None when it keeps it)."""
    text = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Traceback" in text:
        return "traceback"
    if code != 2 or len(lines) != 1 or f"'{field}" not in lines[0]:
        return f"exit {code}, {len(lines)} lines, field {field!r}: {text[-300:]!r}"
    return None


N_CASES = {"config": 0, "text": 0}


@settings(max_examples=450, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=bad_case())
def test_one_bad_field_is_one_line_and_exit_2(tmp_path_factory, case):
    tmp = tmp_path_factory.mktemp("fuzz", numbered=True)
    field, data, flags = case
    result = runner.invoke(app, ["retrain", str(write_case(tmp, data)), *flags])
    N_CASES["config"] += 1
    assert check(result, field) is None, check(result, field)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(text=st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
       .filter(lambda t: not isinstance(_safe_yaml(t), dict)))
def test_yaml_that_is_no_mapping_is_one_line_and_exit_2(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml", numbered=True) / "job.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = runner.invoke(app, ["retrain", str(path), "--registered-model", "m"])
    N_CASES["text"] += 1
    assert check(result, "config") is None, check(result, "config")


def _safe_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001
        return None


def test_enough_cases_ran():
    assert sum(N_CASES.values()) >= 500 or sum(N_CASES.values()) == 0  # 0: run alone with -k


@pytest.mark.parametrize("flags,field", [(["--constraint", "accuracy=>0.9"], "constraint"),
                                         (["--run-key", "a b"], "run_key"), (["--trials", "-3"], "n_trials")])
def test_console_script_prints_one_line_and_no_traceback(tmp_path, flags, field):
    exe = Path(sys.executable).with_name("metacompress")
    path = write_case(tmp_path, {})
    result = subprocess.run([str(exe), "retrain", str(path), "--registered-model", "m", *flags],
                            capture_output=True, text=True, timeout=120)
    assert check(result, field) is None, check(result, field)
    assert result.stdout.strip() == ""  # the one line is on stderr


# --------------------------------------------------------------------------------------------- report's input
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=8)
SUMMARY = {"study_name": "s", "task": "digits-mlp", "n_complete": 1, "hypervolume": 0.5,
           "teacher": {"accuracy": 0.97, "size_bytes": 68904.0, "latency_ms": 0.03},
           "pareto": [{"number": 0, "params": {"layers.fc1.bits": 4, "layers.fc1.prune": 0.5, "kd_lambda": 0.5,
                                               "temperature": 2.0, "prune_method": "structured"},
                       "metrics": {"accuracy": 0.95, "size_bytes": 900.0, "compression_ratio": 76.6,
                                   "latency_ms": 0.02, "speedup": 1.5}}]}


@st.composite
def broken_summary(draw: Any) -> Any:
    """A valid summary with one value anywhere in it replaced by arbitrary JSON, or arbitrary JSON itself."""
    if draw(st.booleans()):
        return draw(_json)
    import copy

    summary = copy.deepcopy(SUMMARY)
    paths = [(k,) for k in summary] + [("teacher", k) for k in summary["teacher"]] + [
        ("pareto", 0, k) for k in summary["pareto"][0]] + [("pareto", 0, "metrics", k) for k in
                                                           summary["pareto"][0]["metrics"]] + [
        ("pareto", 0, "params", k) for k in summary["pareto"][0]["params"]]
    path = draw(st.sampled_from(paths))
    node = summary
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(_json)
    return summary


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(summary=broken_summary())
def test_report_shows_a_summary_or_names_path_in_one_line(tmp_path_factory, summary):
    """Whatever JSON a summary.json holds, report prints its table (exit 0) or one line naming 'path' (exit 2)."""
    path = tmp_path_factory.mktemp("report") / "summary.json"
    path.write_text(json.dumps(summary))
    result = runner.invoke(app, ["report", str(path)])
    if result.exit_code == 0:
        assert "Pareto front" in result.output
    else:
        assert check(result, "path") is None, (check(result, "path"), summary)
