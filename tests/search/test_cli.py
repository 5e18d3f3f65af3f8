"""The command line: listing tasks, reports, and one clear line with exit code 2 for every kind of bad input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

from metacompress.learners.meta.proxy import PROXY_NAME, TUNED_PROXY_NAME
from metacompress.search.cli import app
from metacompress.search.study import counted_trials

runner = CliRunner()


def _one_error_line(result) -> str:
    text = result.output.strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_tasks_lists_every_builtin():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("digits-cnn", "mnist1d-cnn", "wine-mlp", "digits-5w5s"):
        assert name in result.output


def test_layers_shows_what_structured_pruning_removes_from_each_layer_or_why_not(tmp_path):
    by_name = runner.invoke(app, ["layers", "digits-mlp", "--json"])
    assert by_name.exit_code == 0, by_name.output
    layers = {r["name"]: r for r in json.loads(by_name.output)}
    assert list(layers) == ["fc1", "fc2", "head"]
    assert layers["fc1"]["structured"] and layers["fc1"]["removes"] == "output features"
    assert layers["head"]["reason"] == "they reach the model's output"
    config = tmp_path / "mlp.yaml"
    config.write_text(yaml.safe_dump(BASE))
    table = runner.invoke(app, ["layers", str(config)])
    assert table.exit_code == 0, table.output
    assert "Compressible layers of digits-mlp" in table.output and "2 of 3 layers" in table.output
    bad = runner.invoke(app, ["layers", "digits-nope"])
    assert bad.exit_code == 2 and "'config'" in _one_error_line(bad)
    close = runner.invoke(app, ["layers", "wine"])
    assert close.exit_code == 2 and "Did you mean 'wine-mlp'?" in _one_error_line(close)


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


BASE = {"task": "digits-mlp", "n_trials": 2, "warm_start": {"mode": "off"}}


@pytest.mark.parametrize(
    ("config", "flags", "field"),
    [
        (None, [], "config"),  # missing file
        ("task: [unclosed\n", [], "config"),  # unreadable YAML
        ({**BASE, "n_trails": 3}, [], "n_trails"),  # unknown key, with a suggestion
        ({**BASE, "task": "digits-cnm"}, [], "task"),  # unknown task
        (BASE, ["--backend", "spark"], "backend"),
        (BASE, ["--sampler", "bayes"], "sampler"),
        (BASE, ["--trials", "0"], "n_trials"),
        (BASE, ["--trials", "2.5"], "n_trials"),  # worded as retrain words it, by the config's checks
        (BASE, ["--seed", "x"], "seed"),
        (BASE, ["--n-jobs", "1.5"], "parallel.n_jobs"),
        ({**BASE, "space": {"prune": {"low": 0.0, "high": 1.2}}}, [], "space.prune"),
        ({**BASE, "space": {"bits": [9]}}, [], "space.bits"),
        (BASE, ["--tracking-uri", "http://127.0.0.1:9"], "tracking_uri"),  # server down: fail before training
        (BASE, ["--storage", "mysql://u:p@127.0.0.1:9/db"], "storage"),  # unreachable storage
        ({**BASE, "train": {"device": f"cuda:{torch.cuda.device_count()}"}}, [], "train.device"),  # none here
        (BASE, ["--tracking-uri", "bogus://nowhere"], "tracking_uri"),  # a scheme MLflow cannot track to
        (BASE, ["--warm-start", "maybe"], "warm_start"),  # neither auto, off nor a file
        (BASE, ["--out", "/dev/null/out"], "out"),  # cannot be created: before the teacher is even loaded
    ],
    ids=["missing-file", "bad-yaml", "unknown-key", "unknown-task", "backend", "sampler", "trials", "trials-float",
         "seed-word", "n-jobs-float",
         "prune-range", "bits", "tracking-down", "storage-down", "device-missing", "tracking-scheme",
         "warm-start-mode", "out-unwritable"],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, config, flags, field):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "missing.yaml" if config is None else _write(tmp_path, config)
    args = ["search", str(path), *flags]
    if "--tracking-uri" not in flags:
        args += ["--tracking-uri", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert f"'{field}" in line


def test_a_search_that_fails_before_any_work_leaves_no_empty_output_folder(tmp_path, monkeypatch):
    """check_out proves the folder can be made, then removes what it made: a later refusal (here the tracking
    server down) leaves nothing behind, and a folder that existed stays."""
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BASE)
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "runs" / "a", tmp_path / "kept"):
        result = runner.invoke(app, ["search", str(path), "--tracking-uri", "http://127.0.0.1:9", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "'tracking_uri" in _one_error_line(result)
    assert not (tmp_path / "runs").exists() and (tmp_path / "kept").is_dir()


def test_a_sqlite_tracking_store_no_file_can_be_written_beside_is_refused_before_any_work(tmp_path, monkeypatch):
    """/proc passes a permission check as root but refuses every new file: MLflow would retry for minutes."""
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BASE)
    result = runner.invoke(app, ["search", str(path), "--tracking-uri", "sqlite:////proc/mlflow.db"])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert "'tracking_uri'" in line and "/proc/mlflow.db" in line
    assert not (tmp_path / "metacompress.db").exists()  # refused before the study was created


def test_a_bad_policies_file_is_one_line_before_the_study_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps([{"params": {"foo": 1}}]))
    result = runner.invoke(app, ["search", str(_write(tmp_path, BASE)), "--warm-start", str(policies),
                                 "--tracking-uri", "none"])
    assert result.exit_code == 2
    assert "warm_start.file[0]: The 'params' keys must be one of" in _one_error_line(result)


def test_a_storage_that_cannot_be_opened_says_why_and_hides_a_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, BASE)
    for storage, cause in (("sqlite:////proc/study.db", "OperationalError: unable to open database file"),
                           ("postgresql://me:s3cret@127.0.0.1:9/db", "postgresql://me:***@127.0.0.1:9/db")):
        result = runner.invoke(app, ["search", str(path), "--storage", storage, "--tracking-uri", "none"])
        assert result.exit_code == 2
        line = _one_error_line(result)
        assert "'storage'" in line and cause in line and "s3cret" not in line


def test_a_ray_address_on_the_optuna_backend_is_said_to_be_unused(search_yaml):
    result = runner.invoke(app, ["search", str(search_yaml(n_trials=1, tracking_uri="none")), "--address",
                                 "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    assert "--address is the ray backend's; backend 'optuna' runs here" in result.output


def test_an_error_line_shows_its_brackets(tmp_path):
    """The allowed values in brackets are text, not console markup that would swallow them."""
    result = runner.invoke(app, ["search", str(_write(tmp_path, {**BASE, "space": {"prune_method": ["foo"]}}))])
    assert result.exit_code == 2
    assert "drawn from [unstructured, structured]. Got 'foo'." in _one_error_line(result)


def test_a_toml_config_is_named_as_such(tmp_path):
    path = tmp_path / "search.toml"
    path.write_text('task = "digits-mlp"\n')  # YAML would read it as one string
    result = runner.invoke(app, ["search", str(path)])
    assert result.exit_code == 2
    assert "'config' value must be a YAML file (configs are YAML, not TOML)" in _one_error_line(result)


def test_unknown_key_suggests_the_close_one(tmp_path):
    result = runner.invoke(app, ["search", str(_write(tmp_path, {**BASE, "n_trails": 3}))])
    assert "The 'n_trails' key must be one of" in _one_error_line(result)  # a key, not a value
    assert "Did you mean 'n_trials'" in _one_error_line(result)


def test_a_study_another_search_is_running_is_refused_in_one_line_before_any_work(search_yaml, tmp_path):
    from metacompress.search.config import load_config
    from metacompress.search.local import file_lock, lock_path

    path = search_yaml(n_trials=1, tracking_uri="none", storage=f"sqlite:///{tmp_path}/busy.db")
    cfg = load_config(path)
    with file_lock(lock_path(cfg.storage, cfg.study_name, "run")):  # as a running search holds it
        result = runner.invoke(app, ["search", str(path)])
    assert result.exit_code == 2 and "'study_name'" in _one_error_line(result)
    assert not (tmp_path / "busy.db").exists()  # refused before the study was opened


def test_reusing_a_study_name_with_another_space_is_refused_and_overwrites_nothing(search_yaml, tmp_path):
    first = search_yaml(n_trials=1, tracking_uri="none")
    assert runner.invoke(app, ["search", str(first)]).exit_code == 0
    other = search_yaml(n_trials=1, tracking_uri="none", space={"bits": [4, 8], "epochs": {"low": 1, "high": 1},
                                                                "prune_method": ["unstructured", "structured"]})
    result = runner.invoke(app, ["search", str(other)])
    assert result.exit_code == 2
    line = _one_error_line(result)  # the field that changed, what the study holds, and the way out
    assert "The 'space.bits' value must be [2, 4, 8], as when study 'search' began" in line
    assert "a new --study-name" in line and "Got [4, 8]" in line
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_complete"] + summary["n_failed"] == 1


def test_report_prints_the_pareto_table_of_a_finished_search(search_yaml, tmp_path):
    path = search_yaml(n_trials=2, tracking_uri="none")
    assert runner.invoke(app, ["search", str(path)]).exit_code == 0
    result = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert result.exit_code == 0 and "Pareto front" in result.output
    bad = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "'path'" in _one_error_line(bad)
    from rich.console import Console

    from metacompress.search.report import pareto_rows, pareto_table

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = pareto_rows(summary)
    for width in (80, 132):  # a narrow terminal gets the policies under the table, each on one line
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(pareto_table(summary, width=width))
        text = console.export_text()
        assert all(len(line) <= width for line in text.splitlines())
        assert ("policies:" in text) == (width == 80)
        for row in rows:
            assert (f"trial {row[0]}: {row[-1]}" in text) == (width == 80) and row[-1] in text


def test_suggest_shows_the_proposals_with_their_measured_proxies(search_yaml):
    path = search_yaml(tracking_uri="none")
    result = runner.invoke(app, ["suggest", str(path), "--n", "4", "--json", "--tuned", "2"])
    assert result.exit_code == 0, result.output
    proposals = json.loads(result.output)
    assert len(proposals) == 4
    for name in (PROXY_NAME, TUNED_PROXY_NAME):  # measured before and after the first steps
        measured = [p["predicted"][name] for p in proposals if name in p["predicted"]]
        assert measured and all(0.0 <= v <= 1.5 for v in measured), name
    path = search_yaml(tracking_uri="none", warm_start={"mode": "auto", "n_points": 3})
    table = runner.invoke(app, ["suggest", str(path)])  # the default: the proxy alone, the config's n_points
    assert table.exit_code == 0 and "run order" in table.output
    numbers = [ln.split("│")[1].strip() for ln in table.output.splitlines() if ln.startswith("│")]
    assert [n for n in numbers if n] == ["0", "1", "2"]  # rows may wrap onto more lines
    assert "before fine-tuning" in table.output and "after its first" in table.output
    bad = runner.invoke(app, ["suggest", str(path), "--tuned", "20"])
    assert bad.exit_code == 2 and "--tuned" in bad.output


def test_console_script_runs_without_a_traceback_on_bad_input(tmp_path):
    exe = Path(sys.executable).with_name("metacompress")
    result = subprocess.run([str(exe), "search", str(tmp_path / "nope.yaml")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "'config'" in result.stderr


@pytest.mark.parametrize(("command", "flags", "needle"), [
    ("search", ["--trails", "3"], "--trails. Did you mean '--trials'?"), ("search", ["--trials", "abc"], "'n_trials'"),
    ("search", ["--bogus"], "No such option: --bogus."),  # nothing close by name: no suggestion (click's: --out)
    ("suggest", ["--n", "0"], "The '--n' value must be an integer in [1, 256]. Got '0'."),  # both bounds named
    ("export", ["--trial", "x"], "The '--trial' value must be an integer >= 0. Got 'x'."),
    ("retrain", [], "--registered-model"),  # a required option left out
])
def test_console_script_usage_errors_are_one_line_too(tmp_path, command, flags, needle):
    exe = Path(sys.executable).with_name("metacompress")
    config = tmp_path / "c.yaml"
    config.write_text("task: digits-mlp\n")
    result = subprocess.run([str(exe), command, str(config), *flags], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
    assert "Possible options" not in lines[0] and ("--bogus" not in flags or "Did you mean" not in lines[0])


def test_search_says_whether_it_starts_or_resumes_a_study_and_where(search_yaml, tmp_path):
    """A mistyped --storage or --study-name starts a new study: the first line says so, and names a folder the
    storage had to create, before any training."""
    path = search_yaml(n_trials=2, tracking_uri="none", storage=f"sqlite:///{tmp_path}/new/dir/s.db")
    first = runner.invoke(app, ["search", str(path)])
    assert first.exit_code == 0, first.output
    line = first.output.splitlines()[0]
    assert "'search': new" in line and f"(created {tmp_path / 'new' / 'dir'})" in line
    again = runner.invoke(app, ["search", str(path), "--trials", "3"])
    assert again.exit_code == 0, again.output
    assert "resuming with 2 of 3 trials finished (1 to run)" in again.output.splitlines()[0]
    assert "created" not in again.output.splitlines()[0]
    spent = runner.invoke(app, ["search", str(path), "--trials", "2"])  # fewer than the study holds
    assert spent.exit_code == 0, spent.output
    assert "'search': 3 trials finished, the budget of 2 is spent (nothing to run)" in spent.output.splitlines()[0]


def test_a_printed_storage_url_hides_its_password():
    from metacompress.search.study import _without_password

    assert _without_password("postgresql://user:s3cret@db:5432/mc") == "postgresql://user:***@db:5432/mc"
    assert "s3cret" not in _without_password("not a url://user:s3cret@host")
    assert _without_password("sqlite:///runs/study.db") == "sqlite:///runs/study.db"


@pytest.mark.parametrize("command", ["search", "suggest", "export", "retrain"])
def test_help_labels_only_options_that_take_a_value(command):
    """Typer labels every option with a type; an on/off flag shown as ``--debug <bool>`` reads as if it took one."""
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--debug" in text and "--help" in text and "<bool>" not in text
    assert "<int>" in text or "<str>" in text  # options that do take a value keep their label
    if command == "retrain":  # its one required option is marked so
        assert re.search(r"\*\s+--registered-model", text)


def test_a_second_search_warm_starts_from_the_pretrained_gbm_continued_on_the_first(search_yaml, tmp_path):
    """The flywheel end to end: a finished search joins the history, and the next search's warm start continues the
    pretrained GBM's boosting on it instead of refitting it."""
    assert runner.invoke(app, ["search", str(search_yaml(n_trials=2))]).exit_code == 0
    second = search_yaml(n_trials=2, study_name="second", out=str(tmp_path / "second"),
                         warm_start={"mode": "auto", "n_points": 4})  # more than the budget: 2 can run
    result = runner.invoke(app, ["search", str(second)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert "the pretrained GBMRetentionPredictor, its boosting continued on the history" in \
        summary["warm_start"]["reason"]
    assert summary["warm_start"]["n_points"] == 2 and summary["n_complete"] == 2
    assert "warm start: 2 points" in result.output


def test_history_shows_what_warm_starts_learn_from(search_yaml, tmp_path):
    """Every finished search joins the history: the command lists its rows by task, next to the shipped ones."""
    path = search_yaml(n_trials=2)
    assert runner.invoke(app, ["search", str(path)]).exit_code == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, ["history", "--tracking-uri", uri, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["tracked"]["digits-mlp"]["rows"] == 2 and summary["tracked"]["digits-mlp"]["studies"] == 1
    assert summary["rows"] == summary["shipped"]["rows"] + 2 and "digits-mlp" in summary["shipped"]["tasks"]
    assert "boosting continued on the" in summary["predictor"]  # a grown history: the pretrained GBM goes on
    table = runner.invoke(app, ["history", "--tracking-uri", uri])
    assert table.exit_code == 0 and "2 rows of 1 task from 1 search" in table.output and "tracked" in table.output
    alone = json.loads(runner.invoke(app, ["history", "--tracking-uri", "none", "--json"]).output)
    assert alone["tracked"] == {} and alone["predictor"].startswith("the pretrained")
    untracked = runner.invoke(app, ["history", "--tracking-uri", "none"])
    assert untracked.exit_code == 0 and "tracking store: none" in untracked.output
    missing = runner.invoke(app, ["history", "--tracking-uri", "sqlite:///" + str(tmp_path / "nothing.db")])
    assert missing.exit_code == 0 and "no store there yet" in missing.output
    assert not (tmp_path / "nothing.db").exists()  # reading does not create a store
    (tmp_path / "empty.db").touch()
    empty = runner.invoke(app, ["history", "--tracking-uri", "sqlite:///" + str(tmp_path / "empty.db")])
    assert empty.exit_code == 0 and "no store there yet" in empty.output
    assert (tmp_path / "empty.db").stat().st_size == 0  # nor turn an empty file into one
    experiment = "metacompress-digits-mlp"  # one experiment per config
    named = runner.invoke(app, ["history", "--tracking-uri", uri, "--experiment", experiment, "--json"])
    assert json.loads(named.output)["tracked"]["digits-mlp"]["rows"] == 2
    for store in (uri, "none"):  # a typo reads nothing: named, with the experiments there are
        typo = runner.invoke(app, ["history", "--tracking-uri", store, "--experiment", "metacompress-digits-mpl"])
        assert typo.exit_code == 2 and "'experiment'" in _one_error_line(typo), typo.output
        assert (f"Did you mean {experiment!r}?" in typo.output) == (store == uri)


@pytest.mark.parametrize("command", ["history", "suggest"])
def test_an_unreachable_history_store_is_one_line_and_exit_code_2(search_yaml, command):
    args = ["--tracking-uri", "http://127.0.0.1:9"]
    result = runner.invoke(app, [command, *args] if command == "history" else [command, str(search_yaml()), *args])
    assert result.exit_code == 2, result.output
    assert "'tracking_uri'" in _one_error_line(result)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("[]", "a JSON object, not list"), ("{}", "no 'study_name'"),
     ('{"study_name": "s", "task": "t", "n_complete": "3", "hypervolume": 0.5, "pareto": []}',
      "'n_complete' of the wrong type"),
     ('{"study_name": "s", "task": "t", "n_complete": 1, "hypervolume": 0.5, "pareto": []}', "no 'teacher'"),
     ('{"study_name": "s", "task": "t", "n_complete": 1, "hypervolume": 0.5, "teacher": {"accuracy": 0.9}, '
      '"pareto": [{"number": 1}]}', "pareto[0] without"),
     ('{"study_name": "s", "pareto": [', "not JSON")],
    ids=["list", "empty", "wrong-type", "no-teacher", "pareto-entry", "truncated"],
)
def test_report_of_a_json_that_is_not_a_summary_is_one_line_and_exit_code_2(tmp_path, content, problem):
    path = tmp_path / "summary.json"
    path.write_text(content)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert "'path'" in line and problem in line


def test_report_shows_a_pareto_entry_whose_params_are_not_numbers():
    from metacompress.search.report import pareto_rows

    summary = {"study_name": "s", "task": "t", "n_complete": 1, "hypervolume": 0.5, "teacher": {"accuracy": 0.9},
               "pareto": [{"number": 4, "metrics": {"accuracy": 0.8, "size_bytes": 100.0},
                           "params": {"layers.fc.bits": "4", "layers.fc.prune": 0.5, "kd_lambda": None}}]}
    (row,) = pareto_rows(summary)
    assert row[0] == "4" and row[2] == "-10.00" and row[-1] == "prune 50%"


def test_report_says_which_trials_asha_stopped_and_that_a_budget_is_unfinished(tmp_path):
    summary = {"study_name": "s", "task": "t", "n_trials": 10, "n_complete": 3, "n_failed": 1, "n_pruned": 2,
               "hypervolume": 0.5, "teacher": {"accuracy": 0.9}, "pareto": [], "failures": {"boom": [4]}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = runner.invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "(3 complete trials" in result.output
    assert "2 trials stopped early by the ASHA scheduler" in result.output
    assert "unfinished: 6 of 10 trials ran" in result.output and "1 trial failed: boom" in result.output
    finished = {**summary, "n_complete": 7}
    (tmp_path / "summary.json").write_text(json.dumps(finished))
    assert "unfinished" not in runner.invoke(app, ["report", str(tmp_path)]).output


def test_the_policy_column_shows_the_feature_and_proximal_weights_only_when_on():
    from metacompress.search.report import policy_text

    base = {"layers.fc.bits": 4, "layers.fc.prune": 0.5, "kd_lambda": 0.5, "temperature": 4.0}
    assert policy_text({**base, "feature_beta": 0.0, "prox_mu": 0.0}) == "bits 4 · prune 50% · λ 0.50 · T 4.0"
    assert policy_text({**base, "feature_beta": 0.5, "prox_mu": 0.013}).endswith("T 4.0 · β 0.5 · μ 0.013")


@pytest.mark.parametrize(("raised", "code", "needle"), [
    (RuntimeError("disk on fire"), 1, "internal error (RuntimeError): disk on fire (rerun with --debug"),
    (KeyboardInterrupt(), 130, "interrupted: finished trials are saved; rerun the same command to resume."),
], ids=["unexpected", "interrupted"])
def test_an_unexpected_error_or_an_interrupt_is_one_line_too(tmp_path, monkeypatch, raised, code, needle):
    import metacompress.search.config as config_module

    def fail(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(config_module, "load_config", fail)
    path = _write(tmp_path, BASE)
    result = runner.invoke(app, ["search", str(path)])
    assert result.exit_code == code
    assert needle in _one_error_line(result)
    if code == 1:  # --debug shows the traceback instead
        debug = runner.invoke(app, ["search", str(path), "--debug"])
        assert debug.exit_code != 0 and isinstance(debug.exception, RuntimeError)


def test_sigterm_ends_a_local_search_like_ctrl_c_and_the_rerun_resumes(search_yaml, tmp_path):
    """A scheduler's SIGTERM: one line saying the finished trials are saved, exit 143; the rerun finishes the budget
    with no trial lost or repeated."""
    import signal
    import time

    from optuna.trial import TrialState

    path = search_yaml(n_trials=60, tracking_uri="none")
    exe = Path(sys.executable).with_name("metacompress")
    proc = subprocess.Popen([str(exe), "search", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    storage, done = f"sqlite:///{tmp_path}/study.db", 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and done < 2:
        time.sleep(0.5)
        try:
            done = len(counted_trials(optuna.load_study(study_name="search", storage=storage)))
        except KeyError:  # not created yet
            continue
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output
    assert "interrupted: finished trials are saved; rerun the same command to resume." in output
    assert "Traceback" not in output and "Wrote" not in output
    saved = len(counted_trials(optuna.load_study(study_name="search", storage=storage)))
    assert 2 <= saved < 60
    rerun = subprocess.run([str(exe), "search", str(path)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming with {saved} of 60 trials finished" in rerun.stdout
    study = optuna.load_study(study_name="search", storage=storage)
    trials = counted_trials(study)
    assert len(trials) == 60 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 60
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def _load_in_a_fresh_interpreter(file: Path) -> str:
    """Load ``file`` with PyTorch alone (no metacompress import) and return the output shape of a batch of 3."""
    load = f"torch.export.load({str(file)!r}).module()" if file.suffix == ".pt2" else f"torch.jit.load({str(file)!r})"
    code = f"import torch; m = {load}; print(tuple(m(torch.zeros(3, 64)).shape))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout.strip()


def test_export_writes_a_trial_that_loads_with_torch_alone(search_yaml, tmp_path):
    path = search_yaml(n_trials=2, tracking_uri="none")
    assert runner.invoke(app, ["search", str(path)]).exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    best = summary["pareto"][0]
    result = runner.invoke(app, ["export", str(path), "--trial", str(best["number"])])
    assert result.exit_code == 0, result.output
    assert f"(the trial recorded {best['metrics']['accuracy']:.4f}" in result.output
    trial = counted_trials(optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/study.db"))[
        best["number"]]  # the default runtime is the one the trial's latency was measured on
    int8 = bool(trial.user_attrs["metrics"]["int8_runtime"])
    assert ("int8 kernels" in result.output) == int8
    file = tmp_path / "out" / f"trial-{best['number']}.{'pt' if int8 else 'pt2'}"  # torch.export unless int8
    assert ("TorchScript" if int8 else "torch.export") in result.output and str(file) in result.output
    assert _load_in_a_fresh_interpreter(file) == "(3, 10)"
    for name, fmt in (("f32.pt2", "torch.export"), ("f32.pt", "TorchScript")):
        floats = runner.invoke(app, ["export", str(path), "--trial", str(best["number"]), "--no-int8",
                                     "--output", str(tmp_path / name)])
        assert floats.exit_code == 0, floats.output
        assert f"accuracy {best['metrics']['accuracy']:.4f}" in floats.output  # the trial's own arithmetic
        assert f"({fmt}, float kernels" in floats.output and "100.0% of predictions" in floats.output
        assert _load_in_a_fresh_interpreter(tmp_path / name) == "(3, 10)"
    moved = runner.invoke(app, ["export", str(path), "--trial", str(best["number"]), "--no-int8",
                                "--out", str(tmp_path / "elsewhere")])  # a search run with --out: the file joins it
    assert moved.exit_code == 0 and (tmp_path / "elsewhere" / f"trial-{best['number']}.pt2").is_file(), moved.output
    both = runner.invoke(app, ["export", str(path), "--trial", str(best["number"]), "--no-int8", "--out",
                               str(tmp_path / "unused"), "--output", str(tmp_path / "both.pt2")])
    assert both.exit_code == 0 and (tmp_path / "both.pt2").is_file() and not (tmp_path / "unused").exists()
    assert "--out is where the file goes without --output" in both.output  # said, not silently ignored
    before = (tmp_path / "f32.pt2").read_bytes()

    def stopped(model, example, part, number, int8):  # Ctrl-C or a kill half-way through the write
        part.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("metacompress.search.deploy._write", stopped)
        cut = runner.invoke(app, ["export", str(path), "--trial", str(best["number"]), "--no-int8", "--output",
                                  str(tmp_path / "f32.pt2")])
    assert cut.exit_code == 130 and "nothing was written" in cut.output, cut.output
    assert (tmp_path / "f32.pt2").read_bytes() == before  # the earlier export is whole
    assert sorted(p.name for p in tmp_path.glob(".*part*")) == []
    ints = runner.invoke(app, ["export", str(path), "--trial", str(best["number"]), "--int8",
                               "--output", str(tmp_path / "i8.pt")])
    assert ints.exit_code == 0 and "int8 kernels" in ints.output
    assert _load_in_a_fresh_interpreter(tmp_path / "i8.pt") == "(3, 10)"
    for flags, field in ((["--trial", "99"], "'trial'"), (["--trial", "0", "--study-name", "nope"], "'study_name'"),
                         (["--trial", "0", "--output", str(tmp_path / "model.onnx")], "'output'"),
                         (["--trial", "0", "--int8", "--output", str(tmp_path / "i8.pt2")], "'output'"),
                         # folders no file can be written in: /proc refuses even root; a file where a folder goes
                         (["--trial", "0", "--output", "/proc/model.pt2"], "'output'"),
                         (["--trial", "0", "--output", str(tmp_path / "f32.pt" / "model.pt")], "'output'"),
                         (["--trial", "0", "--out", "/proc/exports"], "'out'")):
        bad = runner.invoke(app, ["export", str(path), *flags])
        assert bad.exit_code == 2, bad.output
        assert field in _one_error_line(bad)
    missing = runner.invoke(app, ["export", str(path), "--trial", "0", "--storage", f"sqlite:///{tmp_path}/typo.db"])
    assert missing.exit_code == 2 and "'storage'" in _one_error_line(missing)
    assert not (tmp_path / "typo.db").exists()  # reading never creates a database
    other = tmp_path / "other" / "search.yaml"  # the same study name and storage, another task's model
    other.parent.mkdir()
    other.write_text(path.read_text().replace("task: digits-mlp", "task: wine-mlp"))
    wrong = runner.invoke(app, ["export", str(other), "--trial", str(best["number"])])
    assert wrong.exit_code == 2 and "'config'" in _one_error_line(wrong), wrong.output


def test_a_database_tracking_store_without_its_driver_is_one_line_and_exit_code_2(tmp_path, monkeypatch):
    """search, suggest and history check that the store's Python driver imports before anything runs."""
    import importlib.util

    drivers = {"psycopg": "postgresql://u@127.0.0.1:9/db", "MySQLdb": "mysql://u@127.0.0.1:9/db",
               "pymssql": "mssql+pymssql://u@127.0.0.1:9/db"}
    missing = [uri for module, uri in drivers.items() if importlib.util.find_spec(module) is None]
    if not missing:
        pytest.skip("every database driver this test knows is installed here")
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, {**BASE, "storage": f"sqlite:///{tmp_path}/s.db"})
    for args in (["search", str(path)], ["suggest", str(path)], ["history"]):
        result = runner.invoke(app, [*args, "--tracking-uri", missing[0]])
        assert result.exit_code == 2, result.output
        line = _one_error_line(result)
        assert "'tracking_uri'" in line and "driver is installed" in line


@pytest.mark.slow(reason="console-script searches from three folders (~27 s); the examples test imports factories from their folder")
def test_a_task_factory_next_to_its_config_imports_from_the_console_script_in_any_folder(tmp_path):
    """The console script does not put the working directory on the path (``python -m`` does): a factory module
    beside the config, or in the folder the command runs in, must import all the same, here and in 2 workers."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    plugin = Path(__file__).parents[1] / "learners" / "plugin_task.py"
    (project / "my_model_for_cli.py").write_text(plugin.read_text())
    config = project / "my.yaml"
    config.write_text(yaml.safe_dump({"task": {"factory": "my_model_for_cli:make_task"}, "n_trials": 2,
                                      "warm_start": "off", "tracking_uri": "none",
                                      "storage": f"sqlite:///{tmp_path}/s.db", "parallel": {"n_jobs": 2}}))
    script = Path(sys.executable).with_name("metacompress")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cwd, study in ((elsewhere, "from-elsewhere"), (project, "from-the-project")):
        args = [str(script), "search", str(config), "--study-name", study, "--out", str(tmp_path / study)]
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1500:]
        assert json.loads((tmp_path / study / "summary.json").read_text())["n_complete"] == 2


@pytest.mark.parametrize("folder,config,task,weights", [
    ("own_model", "my_model.yaml", "my-digits-net", "digits_net.pt"),
    pytest.param("transformer", "digits_transformer.yaml", "digits-transformer", "digits_transformer.pt",
                 marks=pytest.mark.slow(reason="~30 s; own_model runs in the default set")),
    pytest.param("recurrent", "digits_lstm.yaml", "digits-lstm", "digits_lstm.pt",
                 marks=pytest.mark.slow(reason="~25 s; own_model runs in the default set")),
])
def test_the_examples_run_as_a_user_would_copy_them(tmp_path, folder, config, task, weights):
    """examples/own_model is what the README tells a user to copy, examples/transformer and examples/recurrent how
    attention and LSTM layers are searched: copied, each must run as written."""
    import shutil

    example = Path(__file__).parents[2] / "examples" / folder
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    shutil.copytree(example, mine, ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    elsewhere.mkdir()
    script = Path(sys.executable).with_name("metacompress")
    done = subprocess.run([str(script), "search", str(mine / config), "--trials", "1", "--warm-start", "off",
                           "--storage", f"sqlite:///{tmp_path}/s.db", "--tracking-uri", "none",
                           "--out", str(tmp_path / "out")], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == task and summary["n_complete"] == 1
    assert summary["teacher"]["accuracy"] > 0.9  # the factory trained its teacher ...
    assert (mine / weights).is_file()  # ... and kept it next to itself for the next run
    if folder == "transformer":  # every projection of both attention layers is searched
        params = summary["pareto"][0]["params"]
        assert {f"layers.encoder.layers.{i}.self_attn.{p}_proj.bits" for i in (0, 1) for p in "qkv"} <= set(params)
    if folder == "recurrent":  # every weight matrix of both LSTM layers is searched
        params = summary["pareto"][0]["params"]
        assert {f"layers.rnn.l{i}.{w}.bits" for i in (0, 1) for w in ("ih", "hh")} <= set(params)


_FAILING_FACTORY = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from metacompress.learners import Task


class Fragile(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if self.training:
            raise RuntimeError("boom while training")
        return self.fc(x)


def make_task(seed: int = 0) -> Task:
    teacher, x = Fragile().eval(), torch.randn(40, 6)
    with torch.no_grad():
        y = teacher(x).argmax(1)  # labels the teacher gets right: a teacher must be better than nothing
    return Task("fragile", teacher, TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), 3)
"""


_SEEDED_FACTORY = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from metacompress.learners import Task


def make_task(seed: int = 0) -> Task:  # the seed shows in the first layer's width
    x = torch.randn(40, 6)
    model = nn.Sequential(nn.Linear(6, 10 + seed), nn.ReLU(), nn.Linear(10 + seed, 3)).eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the teacher gets right
    return Task("seeded", model, TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), 3)


def make_untrained_task() -> Task:  # no validation row right: nothing to compare a student with
    x = torch.randn(40, 6)
    model = nn.Linear(6, 3).eval()
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 3
    return Task("untrained", model, TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), 3)
"""


def test_a_factory_with_a_seed_parameter_receives_the_tasks_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeded_task.py").write_text(_SEEDED_FACTORY)
    for task, seed in (({"factory": "seeded_task:make_task", "seed": 3}, 3),
                       ({"factory": "seeded_task:make_task"}, 0),
                       ({"factory": "seeded_task:make_task", "seed": 3, "kwargs": {"seed": 5}}, 5)):  # kwargs win
        result = runner.invoke(app, ["layers", str(_write(tmp_path, {"task": task})), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)[0]["shape"] == [10 + seed, 6]


def test_a_teacher_that_gets_nothing_right_is_refused_before_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeded_task.py").write_text(_SEEDED_FACTORY)
    untrained = _write(tmp_path, {"task": {"factory": "seeded_task:make_untrained_task"}})
    result = runner.invoke(app, ["search", str(untrained), "--tracking-uri", "none"])
    assert result.exit_code == 2  # refused before the study, not after the first trials
    assert "The 'task.teacher' value must be a trained model" in _one_error_line(result)
    assert not (tmp_path / "metacompress.db").exists()


def test_failed_trials_are_named_with_their_reason_by_search_and_report(tmp_path, monkeypatch):
    """A search whose trials all fail must not end on an empty table alone: it says why, exits 1, and report
    repeats the reasons."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fragile_task.py").write_text(_FAILING_FACTORY)
    path = _write(tmp_path, {"task": {"factory": "fragile_task:make_task"}, "n_trials": 2, "warm_start": "off",
                             "tracking_uri": "none", "storage": f"sqlite:///{tmp_path}/s.db",
                             "out": str(tmp_path / "out"), "train": {"latency_repeats": 1}})
    result = runner.invoke(app, ["search", str(path)])
    assert result.exit_code == 1, result.output  # no model came of it: a scheduler must not see success
    assert "2 trials failed: RuntimeError: boom while training (trials 0, 1)" in result.output
    assert "no trial finished: all 2 failed" in result.output.splitlines()[-1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failures"] == {"RuntimeError: boom while training": [0, 1]} and summary["n_failed"] == 2
    again = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert again.exit_code == 0 and "2 trials failed: RuntimeError: boom while training" in again.output
    job = runner.invoke(app, ["retrain", str(path), "--registered-model", "fragile", "--tracking-uri",
                              f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/job.db"])
    assert job.exit_code == 3, job.output  # nothing promoted, and it says why: not a constraint, no model at all
    assert ("nothing promoted: no trial finished: 2 failed (1 reason; the most frequent: RuntimeError: boom "
            "while training)") in job.output


def test_a_file_tracking_store_is_refused_before_training_unless_mlflow_is_told_to_allow_it(
        search_yaml, tmp_path, monkeypatch):
    """MLflow 3 refuses file stores; without the check a search failed at its first trial (exit 1)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = search_yaml(n_trials=1)
    for uri in ("file:./mlruns", "./mlruns", str(tmp_path / "mlruns")):
        for args in (["search", str(path)], ["suggest", str(path)], ["history"]):
            result = runner.invoke(app, [*args, "--tracking-uri", uri])
            assert result.exit_code == 2, result.output
            line = _one_error_line(result)
            assert "'tracking_uri'" in line and "MLFLOW_ALLOW_FILE_STORE=true" in line
    assert not (tmp_path / "study.db").exists()  # refused before the study was created
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the user's opt-out: the file store works end to end
    assert runner.invoke(app, ["search", str(path), "--tracking-uri", "file:./mlruns"]).exit_code == 0
    result = runner.invoke(app, ["history", "--tracking-uri", "file:./mlruns", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tracked"]["digits-mlp"]["rows"] == 1


def test_the_warm_start_line_counts_front_trials_and_the_predictors_error():
    from metacompress.search.report import warm_start_line

    summary = {"pareto": [{"number": 0}, {"number": 2}], "warm_start": {"points": [
        {"number": 0, "accuracy": 0.90, "predicted_accuracy": 0.95},
        {"number": 1, "accuracy": 0.80, "predicted_accuracy": 0.70},
        {"number": 2, "accuracy": 0.85, "predicted_accuracy": None},  # a file's point: no prediction
        {"number": 3, "accuracy": None, "predicted_accuracy": 0.9}]}}  # failed
    assert warm_start_line(summary) == ("warm start: 4 trials, 2 on the Pareto front; predicted minus real "
                                        "accuracy: median -2.5 pp (from -10.0 to +5.0)")
    assert warm_start_line({"warm_start": {"mode": "off", "n_points": 0}}) is None
    assert warm_start_line({"warm_start": {"points": [{"number": 0, "accuracy": 0.9}]}}) == (
        "warm start: 1 trial, 0 on the Pareto front")
