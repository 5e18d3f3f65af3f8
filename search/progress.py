"""The progress bar of a search: trials done of the budget, best-so-far, elapsed and ETA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .pareto import hypervolume
from .study import counted_trials

__all__ = ["SearchProgress", "best_text"]


class SearchProgress:
    """A rich progress bar that follows the study (trials run by any worker count)."""

    def __init__(self, console: Console, prepared: Any) -> None:
        self.p = prepared
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.task_id = None

    def __enter__(self) -> SearchProgress:
        self.progress.start()
        done = len(counted_trials(self.p.study))
        # a study may hold more trials than this run's budget (--trials lowered): the bar is then full, not 6/3
        self.task_id = self.progress.add_task("trials", total=max(self.p.cfg.n_trials, done), completed=done,
                                              best=self._best())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.task_id is not None and exc[0] is None:  # the last trials may have ended in another worker
            self.update(None)  # type: ignore[arg-type]
        self.progress.stop()

    def _best(self) -> str:
        points = [t.user_attrs.get("metrics") for t in counted_trials(self.p.study) if t.user_attrs.get("metrics")]
        return best_text(points, self.p.reference, self.p.cfg.objectives)

    def update(self, trial: FrozenTrial | None, _prepared: Any = None) -> None:
        """Called after each trial (and once at the end); re-reads the study so trials of other workers count
        too."""
        done = len(counted_trials(self.p.study))
        self.progress.update(self.task_id, completed=done, best=self._best())


def best_text(points: list[dict[str, float]], reference: Mapping[str, float], objectives: Mapping[str, str]) -> str:
    """The bar's best-so-far: the hypervolume and the largest compression within 1 pp of the teacher's accuracy."""
    if not points:
        return "best: -"
    within = [m for m in points if m["accuracy"] >= reference["accuracy"] - 0.01]
    hv = hypervolume(points, reference, objectives)
    if not within:
        return f"HV {hv:.3f} · none within 1 pp yet"
    return f"HV {hv:.3f} · best {max(m.get('compression_ratio', 0.0) for m in within):.1f}× within 1 pp"
