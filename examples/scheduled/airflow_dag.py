"""Airflow DAG: retrain the teacher, then ``metacompress retrain`` (find, compare, promote only when better).

``{{ ds_nodash }}`` is the run key, so an Airflow retry or a cleared task resumes the same study and never promotes
twice. The job's exit code decides what Airflow does (README, "Scheduled retraining"): 3 (no model met the
constraints) skips the task, 2 (bad input, or another run of this job) fails it without retries, and any other
failure (1: e.g. the tracking server down) is retried, the rerun resuming where it stopped. A ``BashOperator``
would retry an exit 2 as well, so the call is a Python callable that raises Airflow's own exceptions.
"""

from __future__ import annotations

import shlex
import subprocess

import pendulum
from airflow import DAG
from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator

RETRAIN = (
    "metacompress retrain /opt/jobs/digits.yaml --registered-model digits-compressed "
    "--constraint 'accuracy>=0.97' --constraint 'latency_ms<=1.0' --run-key {{ ds_nodash }} "
    "--tracking-uri http://mlflow:5000"
)


def run_retrain(command: str) -> None:
    """Run ``command`` (rendered: ``op_kwargs`` are templated) and map its exit code onto Airflow's states."""
    code = subprocess.run(shlex.split(command), check=False).returncode
    if code == 3:
        raise AirflowSkipException("no compressed model met the constraints: nothing promoted, all logged in MLflow")
    if code == 2:
        raise AirflowFailException("bad input, or another run of this job is running: a retry cannot help")
    if code != 0:
        raise RuntimeError(f"metacompress retrain exited {code}: retried, the rerun resumes the same study")


with DAG(
    dag_id="metacompress_retrain_digits",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=10)},
) as dag:
    train_teacher = BashOperator(task_id="train_teacher", bash_command="python /opt/jobs/train_teacher.py")
    compress = PythonOperator(task_id="metacompress_retrain", python_callable=run_retrain,
                              op_kwargs={"command": RETRAIN})
    train_teacher >> compress
