"""Airflow DAG: retrain the teacher, then ``metacompress retrain`` (find, compare, promote only when better).

``{{ ds_nodash }}`` is the run key, so an Airflow retry or a cleared task resumes the same study and never promotes
twice. Exit code 3 (no model met the constraints) is a skip, not a failure; 2 (bad input) fails without retries.
"""

from __future__ import annotations

import pendulum
from airflow import DAG
from airflow.operators.bash import BashOperator

RETRAIN = (
    "metacompress retrain /opt/jobs/digits.yaml --registered-model digits-compressed "
    "--constraint 'accuracy>=0.97' --constraint 'latency_ms<=1.0' --run-key {{ ds_nodash }} "
    "--tracking-uri http://mlflow:5000"
)

with DAG(
    dag_id="metacompress_retrain_digits",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=10)},
) as dag:
    train_teacher = BashOperator(task_id="train_teacher", bash_command="python /opt/jobs/train_teacher.py")
    compress = BashOperator(
        task_id="metacompress_retrain",
        bash_command=RETRAIN,
        skip_on_exit_code=3,  # no compressed model met the constraints: nothing promoted, all logged in MLflow
    )
    train_teacher >> compress
