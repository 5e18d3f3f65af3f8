"""``metacompress retrain``: constraints, the promotion rule, and every exit code against a real sqlite registry."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from metacompress.search.cli import app
from metacompress.search.config import load_config
from metacompress.search.local import file_lock, lock_path
from metacompress.search.retrain import (
    Constraint,
    default_run_key,
    is_better,
    parse_constraint,
    select_candidate,
)
from metacompress.spaces import ConfigError

runner = CliRunner()


# ------------------------------------------------------------------------------------------------ pure rules
@pytest.mark.parametrize("text", ["accuracy>=0.97", " latency_ms <= 1.0 ", "size_bytes<=2e4", "speedup>=1.5"])
def test_constraints_parse(text):
    c = parse_constraint(text)
    assert str(c).replace(" ", "") in text.replace(" ", "").replace("2e4", "20000").replace("1.0", "1")


@pytest.mark.parametrize("text", ["accuracy>0.9", "acc>=0.9", "accuracy>=", "accuracy>=1.5", "size_bytes<=-1",
                                  "latency_ms<=nan", "", "accuracy>=0.9,size_bytes<=1", None])
def test_bad_constraints_name_the_field(text):
    with pytest.raises(ConfigError) as info:
        parse_constraint(text)
    assert info.value.field == "constraint" and str(info.value).startswith("The 'constraint' value must be")


def test_selection_takes_the_smallest_model_that_meets_the_constraints():
    cands = [{"number": 0, "metrics": {"accuracy": 0.99, "size_bytes": 900.0}},
             {"number": 1, "metrics": {"accuracy": 0.95, "size_bytes": 100.0}},
             {"number": 2, "metrics": {"accuracy": 0.97, "size_bytes": 300.0}},
             {"number": 3, "metrics": {"accuracy": 0.98, "size_bytes": 300.0}}]
    assert select_candidate(cands, [parse_constraint("accuracy>=0.97")])["number"] == 3  # tie -> more accurate
    assert select_candidate(cands, [])["number"] == 1
    assert select_candidate(cands, [parse_constraint("accuracy>=0.999")]) is None


def test_promotion_rule_both_directions():
    champ = {"accuracy": 0.970, "size_bytes": 1000.0}
    acc = [parse_constraint("accuracy>=0.95")]
    assert is_better({"accuracy": 0.968, "size_bytes": 800.0}, champ, acc)[0]  # smaller, within tolerance
    assert not is_better({"accuracy": 0.960, "size_bytes": 800.0}, champ, acc)[0]  # smaller but much worse
    assert is_better({"accuracy": 0.975, "size_bytes": 1000.0}, champ, acc)[0]  # more accurate, same size
    assert not is_better({"accuracy": 0.990, "size_bytes": 1001.0}, champ, acc)[0]  # more accurate but larger
    assert not is_better(dict(champ), champ, acc)[0]  # a tie keeps the champion
    assert is_better({"accuracy": 0.96, "size_bytes": 5000.0}, {"accuracy": 0.94, "size_bytes": 10.0}, acc)[0]
    assert not is_better({"accuracy": 0.94, "size_bytes": 10.0}, None, acc)[0]  # must meet the constraints
    assert is_better({"accuracy": 0.96, "size_bytes": 10.0}, None, acc)[0]
    assert Constraint("latency_ms", "<=", 1.0).ok({"latency_ms": float("nan")}) is False


def test_default_run_key_is_the_utc_date():
    assert default_run_key(dt.datetime(2026, 3, 4, 23, 59, tzinfo=dt.timezone.utc)) == "20260304"


# ------------------------------------------------------------------------------------------- real registry
def _job(tmp_path: Path, bits: list[int], name: str = "job", warm_start: object = "off", n_trials: int = 1,
         **space) -> Path:
    cfg = {"task": "digits-mlp", "study_name": "job", "n_trials": n_trials, "seed": 0,
           "storage": f"sqlite:///{tmp_path}/study.db", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
           "out": str(tmp_path / "out"), "warm_start": warm_start,
           "space": {"bits": bits, "prune": 0.0, "epochs": 1, **space},
           "train": {"latency_repeats": 2, "batch_size": 128}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _retrain(path: Path, key: str, *flags: str):
    result = runner.invoke(app, ["retrain", str(path), "--registered-model", "digits", "--run-key", key, *flags])
    assert "Traceback" not in result.output, result.output
    return result


def _registry(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _alias(client, alias: str) -> str:
    return str(client.get_model_version_by_alias("digits", alias).version)


def test_retrain_promotes_only_a_better_model_once(tmp_path):
    """No champion -> promoted; rerun -> nothing twice; a larger model -> kept; a smaller, as accurate one ->
    promoted with 'previous' on the old champion; no model meeting the constraints -> exit 3, all logged."""
    first = _retrain(_job(tmp_path, [4]), "r1")
    assert first.exit_code == 0 and "promoted: version 1" in first.output, first.output
    assert "no accuracy constraint" in first.output  # said, as the smallest model wins whatever its accuracy
    client = _registry(tmp_path)
    assert _alias(client, "champion") == "1"
    v1 = client.get_model_version("digits", "1")
    assert v1.tags["metacompress.run_key"] == "job-r1" and v1.tags["metacompress.packed"].endswith(".mcz")

    again = _retrain(_job(tmp_path, [4]), "r1")  # the crash-rerun of the same run: resumes, never twice
    assert again.exit_code == 0 and "champion unchanged" in again.output
    assert "is spent (nothing to run)" in again.output and "nothing left to run" in again.output
    assert "warm start:" not in again.output  # no predictor fitted for points that would never run
    record = json.loads((tmp_path / "out" / "r1" / "retrain.json").read_text())
    assert record["outcome"] == "promoted" and record["version"] == "1"  # the rerun keeps the decision's record
    parent = client.search_runs([client.get_experiment_by_name("metacompress-digits-mlp").experiment_id],
                                filter_string="tags.`metacompress.study_name` = 'job-r1'")[0]
    assert parent.data.tags["metacompress.retrain.outcome"] == "promoted"
    assert len(client.search_model_versions("name = 'digits'")) == 1
    stricter = _retrain(_job(tmp_path, [4]), "r1", "--constraint", "size_bytes<=1")  # a rerun, other constraints
    assert stricter.exit_code == 0 and "champion unchanged: version 1 was promoted by this run before" in \
        stricter.output, stricter.output  # the decision stands; the record of it is not overwritten
    assert json.loads((tmp_path / "out" / "r1" / "retrain.json").read_text()) == record
    assert client.get_run(parent.info.run_id).data.tags["metacompress.retrain.outcome"] == "promoted"
    changed = _retrain(_job(tmp_path, [4, 8], name="changed"), "r1")  # another space under the same run key
    assert changed.exit_code == 2 and "'space.bits'" in changed.output and "a new --run-key" in changed.output
    for key in [k for k in parent.data.tags if k.startswith("metacompress.retrain.")]:
        client.delete_tag(parent.info.run_id, key)  # as if killed between retrain.json and the run's tags
    assert _retrain(_job(tmp_path, [4]), "r1").exit_code == 0
    tags = client.get_run(parent.info.run_id).data.tags
    assert tags["metacompress.retrain.outcome"] == "promoted" and tags["metacompress.retrain.reason"] == \
        record["reason"]  # the decision's record, not the rerun's "already promoted"

    worse = _retrain(_job(tmp_path, [8], name="wide"), "r2")  # 8-bit: twice the size
    assert worse.exit_code == 0 and "champion kept: not better: size +" in worse.output, worse.output
    assert _alias(client, "champion") == "1" and len(client.search_model_versions("name = 'digits'")) == 1

    better = _retrain(_job(tmp_path, [3], name="narrow", kd_lambda=0.5, lr=0.003, epochs=3), "r3")
    assert better.exit_code == 0 and "promoted: version 2" in better.output, better.output
    assert _alias(client, "champion") == "2" and _alias(client, "previous") == "1"
    record = json.loads((tmp_path / "out" / "r3" / "retrain.json").read_text())
    assert record["outcome"] == "promoted" and record["champion"]["version"] == "1"
    assert record["reason"].startswith("smaller by")
    client.set_registered_model_alias("digits", "champion", "1")  # as if killed after registering version 2,
    client.delete_registered_model_alias("digits", "previous")     # before the aliases moved
    finished = _retrain(_job(tmp_path, [3], name="narrow", kd_lambda=0.5, lr=0.003, epochs=3), "r3")
    assert finished.exit_code == 0 and "promoted: version 2 of digits is now 'champion' (smaller by" in \
        finished.output, finished.output  # for the reason it was decided, not "finished after an interruption"
    assert _alias(client, "champion") == "2" and _alias(client, "previous") == "1"
    assert record["candidate"]["metrics"]["size_bytes"] < record["champion"]["metrics"]["size_bytes"]
    assert record["candidate"]["metrics"]["accuracy"] >= record["champion"]["metrics"]["accuracy"] - 0.005

    warm = _job(tmp_path, [4], name="warm", warm_start={"mode": "auto", "n_points": 1})
    none = _retrain(warm, "r4", "--constraint", "size_bytes<=1")
    assert none.exit_code == 3 and "nothing promoted" in none.output
    assert _alias(client, "champion") == "2" and len(client.search_model_versions("name = 'digits'")) == 2
    study = optuna.load_study(study_name="job-r4", storage=f"sqlite:///{tmp_path}/study.db")
    previous = optuna.load_study(study_name="job-r1", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.trials[0].params == previous.best_trials[0].params  # warm: the last run's Pareto policy first
    parent = client.search_runs([client.get_experiment_by_name("metacompress-digits-mlp").experiment_id],
                                filter_string="tags.`metacompress.study_name` = 'job-r4'")[0]
    assert parent.data.tags["metacompress.retrain.outcome"] == "no_candidate"


def test_a_local_retrain_runs_the_previous_pareto_first_then_points_against_the_front_it_observed(tmp_path):
    from metacompress.search.warmstart import ATTR_INDEX

    assert _retrain(_job(tmp_path, [4], prune={"low": 0.0, "high": 0.5}), "s1").exit_code == 0
    warm = _job(tmp_path, [4, 8], name="warm", warm_start={"mode": "auto", "n_points": 3}, n_trials=4,
                prune={"low": 0.0, "high": 0.7})  # a space widened since: the previous policies are in it
    result = _retrain(warm, "s2")
    assert result.exit_code == 0 and "1 from the previous run; 2 one at a time against the observed front" in \
        result.output, result.output
    study = optuna.load_study(study_name="job-s2", storage=f"sqlite:///{tmp_path}/study.db")
    previous = optuna.load_study(study_name="job-s1", storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.trials
    assert len(trials) == 4 and trials[0].user_attrs["policy"] == previous.best_trials[0].user_attrs["policy"]
    assert ATTR_INDEX not in trials[0].user_attrs  # the fixed point is not one of the k sequential ones
    indices = [t.user_attrs[ATTR_INDEX] for t in trials[1:3]]
    assert len(set(indices)) == 2 and ATTR_INDEX not in trials[3].user_attrs  # then TPE


def test_second_run_of_the_same_job_exits_2_without_waiting(tmp_path):
    path = _job(tmp_path, [4])
    cfg = load_config(path)
    with file_lock(lock_path(cfg.storage, "retrain-job-digits", "job")):
        result = _retrain(path, "r1")
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'registered_model'" in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize(("flags", "field"), [
    (["--registered-model", "a/b"], "registered_model"),  # left out: a usage error (test_cli)
    (["--registered-model", "m", "--run-key", "../x"], "run_key"),
    (["--registered-model", "m", "--run-key", ""], "run_key"),  # not today's key by accident
    (["--registered-model", "m", "--constraint", "accuracy=0.9"], "constraint"),
    (["--registered-model", "m", "--accuracy-tolerance", "2"], "accuracy_tolerance"),
    (["--registered-model", "m", "--trials", "many"], "n_trials"),
    (["--registered-model", "m", "--tracking-uri", "none"], "tracking_uri"),
])
def test_bad_retrain_input_is_one_line_and_exit_2(tmp_path, flags, field):
    result = runner.invoke(app, ["retrain", str(_job(tmp_path, [4])), *flags])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"'{field}'" in lines[0] and "Traceback" not in result.output


def test_the_help_names_every_metric_a_constraint_may_bound():
    from metacompress.search.retrain import CONSTRAINT_METRICS

    text = " ".join(runner.invoke(app, ["retrain", "--help"], env={"COLUMNS": "300"}).output.split())
    assert all(metric in text for metric in CONSTRAINT_METRICS)


def test_a_tracking_server_that_does_not_answer_is_a_retry_for_retrain(tmp_path):
    """Down at 02:30 is not bad input: a scheduler retries exit 1 and not exit 2 (README's exit-code table)."""
    result = runner.invoke(app, ["retrain", str(_job(tmp_path, [4])), "--registered-model", "m",
                                 "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'tracking_uri'" in lines[0] and "retry" in lines[0]
    assert "pass --tracking-uri sqlite:///mlflow.db)" in lines[0]  # not 'or none': retrain needs a registry


def test_an_optuna_database_that_does_not_answer_is_a_retry_for_retrain_and_bad_input_to_a_search(tmp_path):
    """A PostgreSQL storage whose server is down (nothing listens on port 9): the real driver's connection error.
    Scheduled, that is a retry (exit 1); typed by hand, one line naming --storage (exit 2)."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is part of the dev install")
    down = "postgresql://job@127.0.0.1:9/optuna"
    job = runner.invoke(app, ["retrain", str(_job(tmp_path, [4])), "--registered-model", "m", "--storage", down])
    assert job.exit_code == 1, job.output
    lines = [ln for ln in job.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'storage'" in lines[0] and "Connection refused" in lines[0] and "retry" in lines[0]
    search = runner.invoke(app, ["search", str(_job(tmp_path, [4])), "--storage", down])
    assert search.exit_code == 2 and "'storage'" in search.output, search.output


# ------------------------------------------------------------------------------------ job examples (not run)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scheduled"


def _parses(args: list[str]) -> None:
    """``args`` (after ``metacompress``) parse as a ``retrain`` call whose own values pass our checks."""
    import typer

    from metacompress.search.retrain import validate_name

    assert args[0] == "retrain"
    command = typer.main.get_command(app).commands["retrain"]
    ctx = command.make_context("retrain", list(args[1:]))
    validate_name("registered_model", ctx.params["registered_model"])
    for text in ctx.params["constraint"] or []:
        parse_constraint(text)
    assert str(ctx.params["config"]).endswith(".yaml")


def test_crontab_example_is_a_valid_schedule_and_call():
    import shlex

    lines = [ln for ln in (EXAMPLES / "crontab").read_text().splitlines()
             if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert lines
    for line in lines:
        fields = line.split(None, 5)
        for value, (low, high) in zip(fields[:5], [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]):
            assert value == "*" or low <= int(value) <= high
        words = shlex.split(fields[5].split("&&", 1)[1].split(">>", 1)[0])
        _parses(words[words.index("retrain"):])


def test_kubernetes_cronjob_example_is_valid():
    job = yaml.safe_load((EXAMPLES / "cronjob.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "CronJob"
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["metacompress"]
    _parses(container["args"])
    rule = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and set(rule["onExitCodes"]["values"]) == {2, 3}


def test_airflow_example_is_valid_python_calling_the_cli():
    import ast
    import shlex

    source = (EXAMPLES / "airflow_dag.py").read_text()
    tree = ast.parse(source)
    command = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", "") == "RETRAIN")
    words = shlex.split(ast.literal_eval(command).replace("{{ ds_nodash }}", "20260101"))
    assert words[0] == "metacompress"
    _parses(words[1:])
    assert "max_active_runs=1" in source and 'op_kwargs={"command": RETRAIN}' in source
    callable_ = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "run_retrain")
    raised = {}  # exit code -> what the callable raises for it: 3 skips, 2 fails without retries, others retry
    for node in ast.walk(callable_):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            code = node.test.comparators[0].value
            op = type(node.test.ops[0]).__name__
            raised[(op, code)] = node.body[0].exc.func.id
    assert raised == {("Eq", 3): "AirflowSkipException", ("Eq", 2): "AirflowFailException",
                      ("NotEq", 0): "RuntimeError"}


def test_the_sample_job_config_runs_as_the_examples_call_it(tmp_path, monkeypatch):
    """examples/scheduled/digits.yaml, the job config the crontab, CronJob and DAG stand for: a real run."""
    monkeypatch.chdir(tmp_path)  # its out/ folder
    result = runner.invoke(app, ["retrain", str(EXAMPLES / "digits.yaml"), "--registered-model", "digits-compressed",
                                 "--trials", "1", "--run-key", "r1", "--storage", f"sqlite:///{tmp_path}/s.db",
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 0 and "promoted: version 1 of digits-compressed" in result.output, result.output
