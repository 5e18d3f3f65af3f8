"""The ``metacompress`` command line: ``search``, ``tasks``, ``layers``, ``suggest``, ``history``, ``report``,
``export``, ``retrain``.

Bad input (a missing file, an unknown key, an out-of-range value, an unreachable store) ends with exit code 2 and
one line naming the field and what is allowed; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from metacompress.spaces import ConfigError, MetacompressError, Terminated
from metacompress.spaces.errors import close_hint

from .config import MAX_WARM_POINTS

__all__ = ["app", "main"]

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

def _unlabelled_help(get_help_option: Callable[..., Any]) -> Callable[..., Any]:
    """``--help`` shown without a value label (typer labels every flag ``<bool>``, as if it took one)."""

    def wrapped(self: Any, ctx: Any) -> Any:
        option = get_help_option(self, ctx)
        if option is not None:
            option.metavar = ""
        return option

    return wrapped


class _Command(typer.core.TyperCommand):
    get_help_option = _unlabelled_help(typer.core.TyperCommand.get_help_option)


class _Group(typer.core.TyperGroup):  # the top-level ``metacompress --help``
    get_help_option = _unlabelled_help(typer.core.TyperGroup.get_help_option)


def _flag(*names: str, help: str) -> Any:  # noqa: A002 - typer's own keyword
    """An on/off option, shown without a value label."""
    return typer.Option(False, *names, metavar="", help=help)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Meta-learned search for pruning, quantization and distillation of PyTorch models.")
console = Console(width=None if sys.stdout.isatty() else 132)
err_console = Console(stderr=True)
_DEBUG = {"on": False}
#: What an interrupted command (Ctrl-C, SIGTERM) leaves, by command; any other changed nothing.
_INTERRUPTED = {"search": "finished trials are saved; rerun the same command to resume.",
                "retrain": "finished trials are saved; rerun the same command to resume.",
                "export": "nothing was written (a file of that name from before is as it was)."}


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into one line and exit code 2 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _DEBUG["on"] = bool(kwargs.get("debug"))
        Terminated.received = False
        logging.basicConfig(level=logging.INFO if _DEBUG["on"] else logging.WARNING, format="%(message)s")
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if _DEBUG["on"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM (Terminated: main's handler, the Ray driver's)
            if _DEBUG["on"]:  # where it was interrupted
                traceback.print_exc()
            err_console.print(f"interrupted: {_INTERRUPTED.get(fn.__name__, 'nothing was changed.')}")
            raise typer.Exit(143 if isinstance(exc, Terminated) or Terminated.received else 130) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # `metacompress ... --json | head`: the reader left; nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:  # noqa: BLE001 - one line, the traceback only with --debug
            if _DEBUG["on"]:
                raise
            kind = "error" if isinstance(exc, MetacompressError) else f"internal error ({type(exc).__name__})"
            err_console.print(f"[bold red]{kind}:[/] {escape(str(exc))} (rerun with --debug for the traceback)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _overrides(**flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


@app.command(cls=_Command)
@_friendly
def search(
    config: Path = typer.Argument(..., help="Experiment YAML (see experiments/configs/)."),
    trials: Optional[str] = typer.Option(None, "--trials", metavar="<int>", help="Trial budget (n_trials)."),
    backend: Optional[str] = typer.Option(None, help="optuna | ray"),
    sampler: Optional[str] = typer.Option(None, help="tpe | nsga2 | gp | random"),
    warm_start: Optional[str] = typer.Option(None, "--warm-start", help="auto | off | PATH.json"),
    seed: Optional[str] = typer.Option(None, metavar="<int>", help="Seed of the sampler and of training."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (sqlite:///metacompress.db)."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Resume it if it exists."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI, or 'none'."),
    out: Optional[Path] = typer.Option(None, help="Output folder (summary.json, plots)."),
    n_jobs: Optional[str] = typer.Option(None, "--n-jobs", metavar="<int>", help="Local worker processes."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, ray://...)."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Search compression policies for a model; resume when the study exists.

    Exit codes: 0 done; 1 no trial finished (each failure reason is named), or another error; 2 bad input;
    130 / 143 interrupted (rerun to resume).
    """
    from .config import load_config
    from .progress import SearchProgress
    from .report import pareto_table, print_outcome
    from .runner import check_not_running, check_out, prepare, run_search
    from .study import storage_folder, study_line
    from .sync import make_tracker
    from .warmstart import check_warm_start_mode, load_points, policies_file, resolve_warm_start, resumed_warm_start

    cfg = load_config(config, _overrides(
        n_trials=_number_flag("n_trials", trials, int), backend=backend, sampler=sampler,
        seed=_number_flag("seed", seed, int), storage=storage, study_name=study_name, tracking_uri=tracking_uri,
        out=str(out) if out else None,
        **{"parallel.n_jobs": _number_flag("parallel.n_jobs", n_jobs, int), "ray.address": address}))
    mode = warm_start or cfg.warm_start.mode
    check_warm_start_mode(mode)
    check_out(cfg.out)
    check_not_running(cfg)
    tracker = make_tracker(cfg)  # an unreachable tracking server fails here, before any training
    if address and cfg.backend != "ray":
        console.print(f"--address is the ray backend's; backend {cfg.backend!r} runs here (--backend ray to use "
                      "it)", style="yellow", highlight=False)
    if cfg.backend == "ray":  # an address where nothing answers, resources the local Ray lacks
        from .ray_backend import check_ray

        check_ray(cfg)
        if cfg.parallel.n_jobs != 1:
            console.print(f"parallel.n_jobs ({cfg.parallel.n_jobs}) is the optuna backend's; on Ray "
                          f"ray.max_concurrent ({cfg.ray.max_concurrent}) trials run at once", style="yellow",
                          highlight=False)
    folder = storage_folder(cfg.storage)
    new_folder = folder if folder is not None and not folder.exists() else None
    with console.status(f"Preparing {cfg.task_name} (teacher, search space, study)..."):
        p = prepare(cfg, progress=False)
        file = policies_file(mode, cfg.warm_start.file)
        if file:  # a bad policies file is the one line, before the study's
            load_points(file, p.space)
        console.print(study_line(p.study, cfg.n_trials, cfg.storage, new_folder), highlight=False, soft_wrap=True)
        points, info = [], resumed_warm_start(p.study, cfg.n_trials, min(cfg.warm_start.n_points, cfg.n_trials),
                                              sequential=True)
        if info is None:
            points, info = resolve_warm_start(mode, p.space, p.task,  # no more than the budget can run
                                              n_points=min(cfg.warm_start.n_points, cfg.n_trials),
                                              seed=cfg.seed, file=cfg.warm_start.file, tracking_uri=cfg.tracking_uri,
                                              objectives=cfg.objectives, sequential=True, reference=p.reference,
                                              batch_size=cfg.train.batch_size)
    if info.get("reason"):
        console.print(info["reason"], style="yellow" if info["reason"].startswith("cold") else None)
    with SearchProgress(console, p) as bar:
        summary = run_search(cfg, warm_points=points, warm_info=info, on_trial_end=bar.update, prepared=p,
                             tracker=tracker)
    console.print(pareto_table(summary, width=console.width))
    print_outcome(console, summary)
    plots = ["pareto.md", "pareto.png", *(["policies.png"] if summary["pareto"] else []), "hypervolume.png"]
    console.print(f"Wrote [bold]{Path(cfg.out) / 'summary.json'}[/] (+ {', '.join(plots)}).")
    if (cfg.tracking_uri != "none"):
        ui = cfg.tracking_uri if cfg.tracking_uri.startswith("http") else None
        console.print("Review in MLflow: " + (f"open {ui}" if ui else
                                              f"{_mlflow_command()} ui --backend-store-uri {cfg.tracking_uri}"))
    failed, stopped = summary.get("n_failed") or 0, summary.get("n_pruned") or 0
    if summary["n_complete"] == 0 and failed + stopped:  # a scheduler must not read this as success
        how = (f"all {failed} failed (the reasons above)" if not stopped else f"all {stopped} stopped early by ASHA"
               if not failed else f"{failed} failed (the reasons above) and {stopped} stopped early by ASHA")
        err_console.print(f"[bold red]error:[/] no trial finished: {how}, so the search has no model (exit 1)",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _mlflow_command() -> str:
    """How to run MLflow's CLI from here: ``mlflow`` when it is on PATH, else the one next to this Python (a
    virtual environment that is not activated, as after ``make install``)."""
    import shutil

    if shutil.which("mlflow"):
        return "mlflow"
    beside = Path(sys.executable).parent / "mlflow"
    if not beside.is_file():
        return "mlflow"
    try:
        return str(beside.relative_to(Path.cwd()))  # .venv/bin/mlflow
    except ValueError:
        return str(beside)


@app.command(cls=_Command)
@_friendly
def tasks(debug: bool = _flag("--debug", help="Show tracebacks.")) -> None:
    """List the built-in tasks and their teachers' accuracy (when trained and cached)."""
    from rich.table import Table

    from metacompress.learners import list_tasks

    table = Table(title="Built-in tasks")
    for col in ("task", "dataset", "architecture", "teacher accuracy", "description"):
        table.add_column(col)
    for t in list_tasks():
        acc = t.get("teacher_accuracy")
        table.add_row(t["name"], str(t.get("dataset", "")), str(t.get("arch", "")),
                      "not trained yet" if acc is None else f"{acc:.4f}", str(t.get("description", "")))
    console.print(table)


@app.command(cls=_Command)
@_friendly
def layers(
    config: str = typer.Argument(..., help="Experiment YAML (its task, as a search loads it) or a built-in task name."),
    as_json: bool = _flag("--json", help="Print the layers as JSON."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Show the layers a search compresses and what structured pruning can remove from each (or why not)."""
    from dataclasses import asdict

    from rich.table import Table

    from metacompress.learners import BUILTIN_TASKS, load_task, structure_report

    from .runner import unsearched_line
    from metacompress.spaces import invalid_value

    if not Path(config).exists() and config in BUILTIN_TASKS:
        task, title = load_task(config), config
    elif not Path(config).is_file():
        error = invalid_value("config", "an existing YAML file or a built-in task name (`metacompress tasks`)", config)
        raise ConfigError(f"{error}{close_hint(config, BUILTIN_TASKS)}", "config")
    else:
        from .config import load_config
        from .runner import load_config_task

        cfg = load_config(config)
        task, title = load_config_task(cfg), cfg.task_name
    report = structure_report(task.teacher, task.example_input(2))
    if as_json:
        print(json.dumps([asdict(r) for r in report], indent=2))
        return
    table = Table(title=f"Compressible layers of {title}")
    for col, justify in (("layer", "left"), ("kind", "left"), ("weight", "left"), ("params", "right"),
                         ("structured pruning removes", "left"), ("together with", "left")):
        table.add_column(col, justify=justify)
    for r in report:
        table.add_row(r.name, r.kind, "×".join(map(str, r.shape)), f"{r.n_params:,}",
                      r.removes if r.structured else f"[dim]nothing: {r.reason}[/]",
                      ", ".join(_relative(c, r.name) for c in r.coupled))
    console.print(table)
    total = sum(r.n_params for r in report)
    held = sum(r.n_params for r in report if r.structured)
    console.print(f"{sum(r.structured for r in report)} of {_count(len(report), 'layer')} "
                  f"({held / max(total, 1):.0%} of the weights) can lose whole outputs; every layer can be pruned "
                  "unstructured and quantized (a structured trial prunes only the layers that can lose whole "
                  "outputs; the others keep every weight, quantized).", highlight=False)
    line = unsearched_line(task.teacher)
    if line:
        console.print(line, style="yellow", highlight=False)


@app.command(cls=_Command)
@_friendly
def suggest(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    n: Optional[int] = typer.Option(None, "--n", min=1, max=MAX_WARM_POINTS, help="How many policies (default: "
                                    "the config's warm_start.n_points, 8 unless set)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the candidate pool (default: the config's)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store whose finished searches "
                                               "join the history, or 'none' (the shipped meta-dataset only)."),
    tuned: int = typer.Option(0, "--tuned", min=0, max=12, help="Also measure the accuracy after the first "
                              "fine-tuning steps (the tuned proxy: at most 20, half of a trial's) of this many best "
                              "candidates per size bin, and re-score them with it."),
    as_json: bool = _flag("--json", help="Print the proposals as JSON."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Print the warm-start policies the predictor proposes, without training anything."""
    from .config import load_config
    from .runner import build_space, load_config_task
    from .tracking import make_tracker
    from .warmstart import history_store

    cfg = load_config(config, _overrides(seed=seed, tracking_uri=tracking_uri))
    make_tracker(cfg.tracking_uri, cfg.experiment_name).check_reachable()  # as a search would: fail fast, exit 2
    task = load_config_task(cfg)
    space = build_space(cfg, task)
    from metacompress.learners.meta import History, propose_for_task

    with contextlib.nullcontext() if as_json else console.status("Scoring candidates, measuring the best ones..."):
        proposals, reason = propose_for_task(space, task, history=History.collect(history_store(cfg.tracking_uri)),
                                             k=n or cfg.warm_start.n_points, seed=cfg.seed,
                                             objectives=cfg.objectives, tuned=tuned,
                                             batch_size=cfg.train.batch_size)
    if as_json:
        print(json.dumps([{"params": pr.params, "predicted": pr.predicted} for pr in proposals], indent=2))
        return
    if not proposals:
        console.print(f"[yellow]{reason}[/]")
        return
    from .report import proposals_table

    console.print(proposals_table(proposals, space, title=f"Warm-start proposals for {cfg.task_name} ({reason})"))


@app.command(cls=_Command)
@_friendly
def history(
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri", help="MLflow store whose finished "
                                     "searches join the history, or 'none' (the shipped meta-dataset only)."),
    experiment: Optional[list[str]] = typer.Option(None, "--experiment", help="Read only this MLflow experiment "
                                                   "(repeatable; default: all of them)."),
    show_all: bool = _flag("--all", help="List every shipped task too, not only the tracked ones."),
    as_json: bool = _flag("--json", help="Print the history's summary as JSON."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Show the trial history warm starts learn from: the shipped meta-dataset and every finished search."""
    from metacompress.learners import BUILTIN_TASKS
    from metacompress.learners.meta import History
    from metacompress.learners.meta.context import predictor_plan

    from .config import tracking_uri_value
    from .tracking import make_tracker
    from .warmstart import history_store

    uri = tracking_uri_value("tracking_uri", tracking_uri)
    make_tracker(uri, "metacompress-history").check_reachable()
    store = history_store(uri)
    if experiment:
        _check_experiments(experiment, store, uri)
    with console.status(f"Reading the history{'' if store is None else ' in ' + store}..."):
        shipped = History.shipped()
        tracked = History.from_mlflow(store, experiment) if store is not None else History()
    both = shipped.concat(tracked)
    plan = predictor_plan(both)
    if as_json:
        def per_task(h: History) -> dict[str, Any]:
            return json.loads(h.summary().to_json(orient="index"))

        print(json.dumps({"rows": len(both), "shipped": {"rows": len(shipped), "tasks": shipped.tasks},
                          "tracking_uri": uri, "tracked": per_task(tracked), "skipped": dict(both.skipped),
                          "predictor": plan}, indent=2))
        return
    builtin = sum(t in BUILTIN_TASKS for t in shipped.tasks)
    console.print(f"shipped meta-dataset: {len(shipped)} rows of {len(shipped.tasks)} tasks ({builtin} built-in, "
                  f"{len(shipped.tasks) - builtin} synthetic)", highlight=False)
    if store is None:
        console.print("tracking store: none (--tracking-uri none), so the shipped meta-dataset alone" if uri == "none"
                      else f"{uri}: no store there yet (nothing tracked)", highlight=False)
    else:
        studies = tracked.frame["study"].nunique() if len(tracked) else 0
        console.print(f"{uri}: {_count(len(tracked), 'row')} of {_count(len(tracked.tasks), 'task')} from "
                      f"{_count(studies, 'search', 'searches')}", highlight=False)
    shown = [("tracked", tracked)] + ([("shipped", shipped)] if show_all else [])
    if any(len(h) for _, h in shown):
        from .report import history_table

        console.print(history_table(shown))
    if both.skipped:
        console.print("skipped: " + ", ".join(f"{n}× {r}" for r, n in both.skipped.most_common()), highlight=False)
    console.print(f"a warm start uses {plan}, adapted on the rows of its own task", highlight=False)


def _check_experiments(names: list[str], store: Optional[str], uri: str) -> None:
    """Each ``--experiment`` must name an experiment of the store (a typo would read nothing and say little)."""
    from mlflow import MlflowClient

    from metacompress.spaces import invalid_value, unknown_key

    if store is None:
        raise invalid_value("experiment", f"an experiment of a tracking store ({uri}: "
                            f"{'none read' if uri == 'none' else 'no store there yet'})", names[0])
    client = MlflowClient(tracking_uri=store)
    for name in names:
        if client.get_experiment_by_name(name) is None:
            raise unknown_key("experiment", name, [e.name for e in client.search_experiments()])


def _relative(name: str, to: str) -> str:
    """``name`` without the module path it shares with ``to`` (``k_proj`` next to ``layers.0.attn.q_proj``)."""
    a, b = name.split("."), to.split(".")
    shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return ".".join(a[shared:]) or name


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@app.command(cls=_Command)
@_friendly
def report(
    path: Path = typer.Argument(..., help="An output folder or its summary.json."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Print the Pareto table of a finished search."""
    from .report import pareto_table, print_outcome, summary_problem

    file = path / "summary.json" if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        why = ("no such file" if not file.exists() else f"not JSON: {exc}" if isinstance(exc, ValueError)
               else exc.strerror or type(exc).__name__)
        raise ConfigError(f"The 'path' value must be a search output folder or summary.json ({why}). "
                          f"Got '{path}'.", "path") from None
    problem = summary_problem(summary)
    if problem is not None:
        raise ConfigError(f"The 'path' value must be a summary.json written by `metacompress search` ({problem}). "
                          f"Got '{file}'.", "path")
    console.print(pareto_table(summary, width=console.width))
    print_outcome(console, summary)


@app.command(cls=_Command)
@_friendly
def export(
    config: Path = typer.Argument(..., help="The search's experiment YAML (its task, storage and study name)."),
    trial: int = typer.Option(..., "--trial", min=0, help="A finished trial (`metacompress report` lists the "
                              "Pareto ones)."),
    output: Optional[Path] = typer.Option(None, "--output", help="A .pt2 file (torch.export) or .pt (TorchScript, "
                                          "the only one with int8 kernels); default OUT/trial-N.pt2, .pt for int8."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="The study (default: the config's)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    out: Optional[Path] = typer.Option(None, help="The search's output folder, where the file goes without "
                                       "--output (default: the config's; `make demo` searched with out/demo)."),
    int8: Optional[bool] = typer.Option(None, "--int8/--no-int8", metavar="", help="Int8 or float Linear/LSTM/GRU "
                                        "kernels (default: the runtime the trial's latency was measured on, the "
                                        "faster one; float for a .pt2 output)."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Write a finished trial as a file that loads with PyTorch alone (torch.export or TorchScript; checked on
    validation data)."""
    from .config import load_config
    from .deploy import MIN_AGREEMENT, export_trial
    from .report import format_bytes

    cfg = load_config(config, _overrides(study_name=study_name, storage=storage, out=str(out) if out else None))
    if out is not None and output is not None:
        console.print(f"--out is where the file goes without --output; --output {output} is written", style="yellow",
                      highlight=False)
    with console.status(f"Exporting trial {trial} of {cfg.study_name}..."):
        result = export_trial(cfg, trial, output, int8=int8)
    kernels = "int8 kernels" if result.int8 else "float kernels"
    console.print(f"Wrote {result.path} ({result.format}, {kernels}, {format_bytes(result.size_bytes)}): accuracy "
                  f"{result.accuracy:.4f} on the validation data (the trial recorded {result.trial_accuracy:.4f}; "
                  f"{result.agreement:.1%} of predictions as the packed model). Load it with "
                  f"{result.load_hint}.", highlight=False, soft_wrap=True)
    if result.agreement < MIN_AGREEMENT:  # only an int8 file gets here: its kernels also quantize activations
        console.print(f"[yellow]int8 kernels change {1 - result.agreement:.1%} of the predictions; --no-int8 "
                      "keeps the trial's arithmetic[/]", highlight=False)


def _number_flag(name: str, text: Optional[str], kind: type) -> Any:
    """A numeric flag taken as text, so a bad value is reported by the config checks as one line."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        return text if name != "accuracy_tolerance" else float("nan")


@app.command(cls=_Command)
@_friendly
def retrain(
    config: Path = typer.Argument(..., help="Experiment YAML of the job (its task factory loads the retrained model)."),
    registered_model: str = typer.Option(..., "--registered-model", help="Registered model whose 'champion' "
                                         "alias is compared and moved."),
    constraint: Optional[list[str]] = typer.Option(None, "--constraint", help="'metric<=value' or 'metric>=value' "
                                                   "(repeatable), e.g. 'accuracy>=0.97', 'latency_ms<=1.0'; metrics: "
                                                   "accuracy, size_bytes, latency_ms, compression_ratio, bitops, "
                                                   "speedup."),
    run_key: Optional[str] = typer.Option(None, "--run-key", help="Names this run's study (default: UTC date "
                                          "YYYYMMDD); a rerun with the same key resumes it."),
    trials: Optional[str] = typer.Option(None, "--trials", metavar="<int>", help="Trial budget (n_trials)."),
    tolerance: Optional[str] = typer.Option(None, "--accuracy-tolerance", metavar="<float>", help="Accuracy a "
                                            "smaller model may lose and still replace the champion (default "
                                            "0.005)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking + registry URI."),
    debug: bool = _flag("--debug", help="Show tracebacks."),
) -> None:
    """Scheduled job: search the retrained model (warm), promote the best constrained model only when better.

    Exit codes: 0 promoted or champion kept (the last line says which);
    3 no model met the constraints, or no trial finished (nothing promoted, everything logged);
    2 bad input, or another run of this job is running; 1 other errors (rerun), e.g. the tracking server or the
    Optuna database did not answer.
    """
    from .config import load_config
    from .retrain import parse_constraint, retrain as run_job, validate_name
    from .tracking import StoreUnreachable

    cfg = load_config(config, _overrides(n_trials=_number_flag("n_trials", trials, int), storage=storage,
                                         tracking_uri=tracking_uri))
    validate_name("registered_model", registered_model)
    constraints = [parse_constraint(c) for c in constraint or []]
    tol = 0.005 if tolerance is None else _number_flag("accuracy_tolerance", tolerance, float)
    if not 0.0 <= tol <= 1.0:
        raise ConfigError(f"The 'accuracy_tolerance' value must be a number in [0, 1]. Got {tolerance!r}.",
                          "accuracy_tolerance")
    try:
        result = run_job(cfg, registered_model, constraints, run_key=run_key, tolerance=tol,
                         say=lambda line: console.print(line, highlight=False))
    except StoreUnreachable as exc:  # a server down for a while (tracking, Optuna's database): the scheduler retries
        err_console.print(f"[bold red]error:[/] {escape(str(exc))} (exit 1: retry when it is back)", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(1) from None
    cand = result.candidate
    if cand:
        m = cand["metrics"]
        console.print(f"selected trial {cand['number']}: accuracy {m['accuracy']:.4f}, "
                      f"{m['size_bytes']:.0f} B, {m.get('latency_ms', float('nan')):.3f} ms", highlight=False)
    lines = {"promoted": f"promoted: version {result.version} of {registered_model} is now 'champion' "
                         f"({result.reason})",
             "already_promoted": f"champion unchanged: {result.reason}",
             "kept": f"champion kept: {result.reason}",
             "no_candidate": f"nothing promoted: {result.reason}"}
    console.print(lines[result.outcome], highlight=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _end_on_sigterm() -> None:
    """SIGTERM (a scheduler, ``kill``, ``timeout``) ends a command as Ctrl-C does: the finished trials saved, one
    line that says so, exit 143. A forked local worker that gets it dies as it would have without the handler."""
    pid = os.getpid()

    def terminate(signum: int, _frame: Any) -> None:
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        Terminated.raise_for(signum, _frame)

    signal.signal(signal.SIGTERM, terminate)


def _unknown_flag(exc: Any) -> str:
    """``No such option: --trails. Did you mean '--trials'?``: click compares whole flags, so the shared ``--``
    makes ``--bogus`` look like ``--out``; the names alone decide here, with the config errors' cutoff."""
    command = exc.ctx.command if exc.ctx is not None else None
    flags = [o for p in getattr(command, "params", []) for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    hint = close_hint(exc.option_name.lstrip("-"), [f[2:] for f in flags], show=lambda name: f"--{name}")
    return f"{exc.message}.{hint}"


def _out_of_range(exc: Any) -> str | None:
    """``The '--n' value must be an integer in [1, 256]. Got '0'.``, as a config value's line reads, for a bad value
    of a flag with bounds (typer's own line names only the bound that was crossed); ``None`` for other flags."""
    low, high = getattr(exc.param, "min", None), getattr(exc.param, "max", None)
    if low is None and high is None:
        return None
    allowed = f"in [{low}, {high}]" if low is not None and high is not None else (
        f">= {low}" if low is not None else f"<= {high}")
    flag = max(exc.param.opts, key=len)
    errors = exc.__cause__.errors() if callable(getattr(exc.__cause__, "errors", None)) else []
    got = f" Got {errors[0]['input']!r}." if errors and "input" in errors[0] else ""
    return f"The '{flag}' value must be an integer {allowed}.{got}"


def main() -> None:
    """Console-script entry point: a usage error (unknown flag, bad flag value) is one line and exit code 2 too."""
    _end_on_sigterm()
    try:  # typer >= 0.26 vendors click
        from typer._click.exceptions import BadParameter, ClickException, NoArgsIsHelpError, NoSuchOption
    except ImportError:  # pragma: no cover - typer on top of click
        from click.exceptions import BadParameter, ClickException, NoArgsIsHelpError, NoSuchOption

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        code = 0
    except ClickException as exc:
        if "--debug" in sys.argv:
            raise
        message = exc.format_message()
        if isinstance(exc, NoSuchOption):
            message = _unknown_flag(exc)
        elif isinstance(exc, BadParameter) and exc.param is not None:
            message = _out_of_range(exc) or message
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
