"""Human-readable views of a search summary: the Pareto table as Markdown and as a rich table."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from metacompress.learners.meta.proxy import PROXY_NAME, TUNED_PROXY_NAME

from .pareto import max_hypervolume

__all__ = ["format_bytes", "history_table", "pareto_markdown", "pareto_rows", "pareto_table", "policy_text",
           "print_outcome", "proposals_table", "summary_problem", "warm_start_line", "failure_lines"]

_COLUMNS = ("trial", "accuracy", "Δ acc (pp)", "size", "ratio", "latency (ms)", "speedup", "policy")


def format_bytes(n: float) -> str:
    """``12345`` -> ``12.1 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _numeric(values: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether each of ``keys`` present in ``values`` is a number (not a bool)."""
    return all(isinstance(values[k], (int, float)) and not isinstance(values[k], bool) for k in keys if k in values)


def summary_problem(summary: Any) -> str | None:
    """What keeps ``summary`` (a parsed ``summary.json``) from being shown, or ``None``: the keys the tables read."""
    if not isinstance(summary, Mapping):
        return f"a JSON object, not {type(summary).__name__}"
    number = (int, float)
    for key, kind in (("study_name", str), ("task", str), ("n_complete", int), ("hypervolume", number),
                      ("pareto", list)):
        if not isinstance(summary.get(key), kind) or isinstance(summary.get(key), bool):
            return f"no {key!r}" if key not in summary else f"{key!r} of the wrong type"
    teacher = summary.get("teacher")
    if teacher is not None and not isinstance(teacher, Mapping):
        return "'teacher' of the wrong type"
    if not teacher or "accuracy" not in teacher:
        return "no 'teacher' accuracy"
    if not _numeric(teacher, ("accuracy", "size_bytes", "latency_ms")):
        return "'teacher' of the wrong type"
    for i, entry in enumerate(summary["pareto"]):
        metrics = entry.get("metrics") if isinstance(entry, Mapping) else None
        if (not isinstance(metrics, Mapping) or not isinstance(entry.get("number"), int)
                or not all(k in metrics for k in ("accuracy", "size_bytes"))
                or not _numeric(metrics, ("accuracy", "size_bytes", "compression_ratio", "latency_ms", "speedup"))):
            return f"pareto[{i}] without a trial number and numeric accuracy and size_bytes metrics"
    return None


def policy_text(params: Mapping[str, Any]) -> str:
    """A compact one-line policy: ``bits 2-8 · prune 35% unstr · λ 0.46 · T 2.6`` (and ``β 0.5 · μ 0.01`` when
    the feature-map or proximal term is on)."""
    if not isinstance(params, Mapping):
        return ""
    num = {k: v for k, v in params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    bits = [v for k, v in num.items() if k.endswith(".bits")]
    prunes = [v for k, v in num.items() if k.endswith(".prune")]
    parts = []
    if bits:
        parts.append(f"bits {min(bits)}-{max(bits)}" if min(bits) != max(bits) else f"bits {bits[0]}")
    if prunes:
        method = {"structured": "struct", "unstructured": "unstr"}.get(str(params.get("prune_method", "")), "")
        parts.append(f"prune {sum(prunes) / len(prunes):.0%} {method}".rstrip())
    if "kd_lambda" in num:
        parts.append(f"λ {num['kd_lambda']:.2f} · T {num.get('temperature', 0):.1f}")
    for key, symbol in (("feature_beta", "β"), ("prox_mu", "μ")):  # shown when searched and on
        if num.get(key):
            parts.append(f"{symbol} {num[key]:.2g}")
    return " · ".join(parts)


def pareto_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """One row of strings per Pareto model, most accurate first."""
    teacher = summary.get("teacher", {})
    rows = []
    for e in summary["pareto"]:
        m = e["metrics"]
        drop = 100 * (m["accuracy"] - teacher.get("accuracy", m["accuracy"]))
        rows.append([
            str(e["number"]), f"{m['accuracy']:.4f}", f"{drop:+.2f}", format_bytes(m["size_bytes"]),
            f"{m.get('compression_ratio', float('nan')):.1f}×", f"{m.get('latency_ms', float('nan')):.3f}",
            f"{m.get('speedup', float('nan')):.2f}×", policy_text(e.get("params", {})),
        ])
    return rows


def _hv_text(summary: Mapping[str, Any]) -> str:
    """The hypervolume, and the most its objectives admit when that is not 1 (2 with latency)."""
    objectives = summary.get("objectives")
    maximum = max_hypervolume(objectives) if isinstance(objectives, Mapping) else 1.0
    hv = f"{summary['hypervolume']:.4f}"
    return hv if maximum == 1.0 else f"{hv} of at most {maximum:g}"


def pareto_markdown(summary: Mapping[str, Any]) -> str:
    """The Pareto table as GitHub Markdown, with the teacher on the first line."""
    t = summary.get("teacher", {})
    lines = [
        f"Pareto front of `{summary['study_name']}` ({summary['task']}, {summary['n_complete']} complete trials, "
        f"hypervolume {_hv_text(summary)})",
        "",
        f"Teacher: accuracy {t.get('accuracy', float('nan')):.4f}, size {format_bytes(t.get('size_bytes', 0))}, "
        f"latency {t.get('latency_ms', float('nan')):.3f} ms",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in pareto_rows(summary)]
    return "\n".join(lines) + "\n"


#: Below this many terminal columns the policy column would shrink to a few letters per line: the policies are
#: listed under the table instead, one line per trial.
WIDE_TABLE = 120


def pareto_table(summary: Mapping[str, Any], width: int | None = None) -> Any:
    """The Pareto table as a ``rich`` renderable: a table, and under it the policies when ``width`` (the
    terminal's columns) is below :data:`WIDE_TABLE`."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = summary.get("teacher", {})
    table = Table(title=f"Pareto front — {summary['study_name']} ({summary['n_complete']} complete trials, "
                        f"HV {_hv_text(summary)})",
                  caption=f"teacher: acc {t.get('accuracy', float('nan')):.4f}, "
                          f"{format_bytes(t.get('size_bytes', 0))}, {t.get('latency_ms', float('nan')):.3f} ms")
    narrow = width is not None and width < WIDE_TABLE
    columns = _COLUMNS[:-1] if narrow else _COLUMNS
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col != "policy")
    rows = pareto_rows(summary)
    for row in rows:
        table.add_row(*row[:len(columns)])
    if not narrow or not rows:
        return table
    return Group(table, Text("policies:\n" + "\n".join(f"  trial {row[0]}: {row[-1]}" for row in rows)))


def warm_start_line(summary: Mapping[str, Any]) -> str | None:
    """One line on how the warm start did: its trials on the front, and how far the predictor was off."""
    warm = summary.get("warm_start")
    points = warm.get("points") if isinstance(warm, Mapping) else None
    if not isinstance(points, list) or not points:
        return None
    ok = [p for p in points if isinstance(p, Mapping) and isinstance(p.get("accuracy"), (int, float))]
    front = {e.get("number") for e in summary.get("pareto", []) if isinstance(e, Mapping)}
    n = len(points)
    on_front = sum(p.get("number") in front for p in ok)
    line = f"warm start: {n} trial{'' if n == 1 else 's'}, {on_front} on the Pareto front"
    gaps = sorted(p["predicted_accuracy"] - p["accuracy"] for p in ok
                  if isinstance(p.get("predicted_accuracy"), (int, float)))
    if gaps:
        line += f"; predicted minus real accuracy: median {100 * statistics.median(gaps):+.1f} pp (from " \
                f"{100 * gaps[0]:+.1f} to {100 * gaps[-1]:+.1f})"
    return line



def proposals_table(proposals: Sequence[Any], space: Any, title: str) -> Any:
    """The warm-start proposals (``learners.meta.Proposal``) of ``metacompress suggest`` as a ``rich`` table."""
    from rich.table import Table

    table = Table(title=title, caption="the batch, in run order (each adds the most predicted hypervolume); a search "
                                       "picks its points from the same predictor one at a time, against the front "
                                       "its trials observed. '–': not measured (the measuring ran out of time; "
                                       "the tuned proxy only with --tuned)")
    for col in ("#", "pred. accuracy retention", "before fine-tuning", "after its first steps", "size", "ratio",
                "policy"):
        table.add_column(col)
    for i, pr in enumerate(proposals):
        d = pr.predicted
        # measured: the student's retention with no fine-tuning, and after the first steps of its own
        proxy, tuned = d.get(PROXY_NAME), d.get(TUNED_PROXY_NAME)
        table.add_row(str(i), f"{d['accuracy_retention']:.3f}", "–" if proxy is None else f"{proxy:.3f}",
                      "–" if tuned is None else f"{tuned:.3f}", format_bytes(d["size_bytes"]),
                      f"{d['compression_ratio']:.1f}×",
                      policy_text(space.decode(pr.params).to_dict()))
    return table


def history_table(parts: Sequence[tuple[str, Any]]) -> Any:
    """``metacompress history``'s table: one row per task of each ``(source, History)`` part."""
    from rich.table import Table

    table = Table(title="Trial history by task")
    for col in ("source", "task", "rows", "searches", "median retention", "best retention", "proxy measured",
                "tuned proxy"):
        table.add_column(col, justify="left" if col in ("source", "task") else "right")
    for source, h in parts:
        for task, r in h.summary().iterrows():
            table.add_row(source, str(task), str(int(r["rows"])), str(int(r["studies"])),
                          f"{r['median_retention']:.3f}", f"{r['best_retention']:.3f}", f"{r['measured']:.0%}",
                          f"{r['tuned']:.0%}")
    return table


def print_outcome(console: Any, summary: Mapping[str, Any]) -> None:
    """After the Pareto table: an unfinished budget, trials stopped early, why trials failed (if any did), and how
    the warm start did."""
    for line in progress_lines(summary) + failure_lines(summary):
        console.print(line, style="yellow", highlight=False)
    if line := warm_start_line(summary):
        console.print(line, highlight=False)


def progress_lines(summary: Mapping[str, Any]) -> list[str]:
    """Trials ASHA stopped early (Ray), and a budget the study has not finished (an interrupted search)."""
    counts = {k: summary.get(k) for k in ("n_trials", "n_complete", "n_failed", "n_pruned")}
    lines = []
    if isinstance(counts["n_pruned"], int) and counts["n_pruned"]:
        n = counts["n_pruned"]
        lines.append(f"{n} {'trial' if n == 1 else 'trials'} stopped early by the ASHA scheduler (weak validation "
                     f"accuracy after an epoch): not on the front")
    if all(isinstance(v, int) for v in counts.values()):
        done = counts["n_complete"] + counts["n_failed"] + counts["n_pruned"]
        if done < counts["n_trials"]:
            lines.append(f"unfinished: {done} of {counts['n_trials']} trials ran; rerun the search to finish it")
    return lines


def failure_lines(summary: Mapping[str, Any], shown: int = 3) -> list[str]:
    """One line per failure reason of the search's failed trials (the ``shown`` most frequent), else nothing."""
    found = summary.get("failures")
    if not isinstance(found, Mapping) or not found:
        return []
    lines = []
    for reason, numbers in list(found.items())[:shown]:
        numbers = list(numbers) if isinstance(numbers, (list, tuple)) else []
        listed = ", ".join(map(str, numbers[:8])) + (", ..." if len(numbers) > 8 else "")
        trials = "trial" if len(numbers) == 1 else "trials"
        lines.append(f"{len(numbers)} {trials} failed: {str(reason)[:300]} ({trials} {listed})")
    if len(found) > shown:
        lines.append(f"... and {len(found) - shown} more failure reasons (summary.json: failures)")
    return lines
